"""Child processes that never outlive their parent, a record of them for the next start, and
who holds a port.

- :func:`with_parent_death` prefixes a command with util-linux ``setpriv --pdeathsig TERM``:
  the kernel sends SIGTERM to the child when the process (thread) that started it dies, even by
  kill -9. No preexec function (unsafe with threads).
- :class:`ChildRecord` keeps the pids (and kernel start times, so a reused pid is never
  touched) of everything a ``heatcache up`` started in ``<state_dir>/stack.pids.json``; the
  next start reaps what a killed ``up`` left behind, and refuses to start while the recorded
  ``up`` still runs.
- :func:`port_owner` names the process listening on a TCP port (from /proc), for errors like
  "port 6800 is held by pid 123 (aria2c --enable-rpc ...)".
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import time
from pathlib import Path

log = logging.getLogger(__name__)


def with_parent_death(cmd: list[str], sig: str = "TERM") -> list[str]:
    setpriv = shutil.which("setpriv")
    if setpriv is None:  # util-linux is essential on Debian; elsewhere the record still reaps
        return cmd
    return [setpriv, f"--pdeathsig={sig}", "--", *cmd]


def start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its last ")"
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None  # a zombie is gone for our purposes
    return int(fields[19])


def describe(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        cmd = "?"
    return f"pid {pid} ({cmd[:120]})"


def port_owner(port: int) -> str | None:
    """Who listens on TCP ``port`` (any address), e.g. "pid 123 (aria2c ...)"; None if nobody."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(parts[9])
    if not inodes:
        return None
    wanted = {f"socket:[{i}]" for i in inodes}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in wanted:
                        return describe(int(proc.name))
    return "a process this user cannot see"


class StackRunning(RuntimeError):
    """Another ``heatcache up`` runs on the same state directory."""


class ChildRecord:
    """``<state_dir>/stack.pids.json``: the running ``up`` and every child it started."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.children: dict[str, tuple[int, int]] = {}  # name -> (pid, start time)

    def claim(self) -> list[str]:
        """Take the state directory for this process: refuse if the recorded ``up`` still runs,
        else stop what a killed one left behind. The leftovers reaped, described."""
        reaped: list[str] = []
        try:
            old = json.loads(self.path.read_text())
        except (OSError, ValueError):
            old = None
        if isinstance(old, dict):
            owner = old.get("owner") or [0, 0]
            if owner[0] != os.getpid() and owner[0] and start_time(owner[0]) == owner[1]:
                raise StackRunning(f"another heatcache up ({describe(owner[0])}) runs on {self.path.parent}; "
                                   "stop it first")
            leftovers = [(name, pid, st) for name, (pid, st) in (old.get("children") or {}).items()
                         if start_time(pid) == st]
            for name, pid, _st in leftovers:
                reaped.append(f"{name} ({describe(pid)})")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            for _name, pid, st in leftovers:
                while start_time(pid) == st and time.monotonic() < deadline:
                    time.sleep(0.1)
                if start_time(pid) == st:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        for item in reaped:
            log.warning("stopped a leftover of a previous heatcache up: %s", item)
        self.children.clear()
        self._write()
        return reaped

    def add(self, name: str, pid: int) -> None:
        self.children[name] = (pid, start_time(pid) or 0)
        self._write()

    def remove(self, name: str) -> None:
        self.children.pop(name, None)
        self._write()

    def release(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = os.getpid()
        body = {"owner": [me, start_time(me) or 0], "children": self.children}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(body))
        os.replace(tmp, self.path)
