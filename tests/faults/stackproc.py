"""`heatcache up` (or one stage) as a real child process for the fault cases: its output
collected line by line, conditions polled with deadlines, the children read from the stack's
record (``<state_dir>/stack.pids.json``), and the stages' health answers read the one way
(``health``, ``edge_objects``, ``edge_healthy``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from heatcache.services.procs import start_time
from heatcache.settings import Settings
from heatcache.stack import settings_env


def wait_for(cond: Callable[[], object], timeout: float = 60.0, what: str = "a condition",
             poll: float = 0.1) -> None:
    """Poll ``cond`` until it is true; fail with ``what`` after ``timeout`` seconds (the one
    polling helper of the integration tests)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def health(url: str, timeout: float = 2.0) -> dict[str, object] | None:
    """The JSON a health endpoint answers (also with 503: a degraded runner sends the same body);
    None while nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return dict(json.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        with exc:
            try:
                return dict(json.loads(exc.read()))
            except ValueError:
                return None
    except OSError:
        return None


def runner_health(port: int) -> dict[str, object]:
    """A stage runner's /health on its metrics port ({} while it does not answer)."""
    return health(f"http://127.0.0.1:{port}/health") or {}


def edge_objects(settings: Settings) -> int:
    """How many objects the edge's index holds, by its health answer (-1 while it does not answer)."""
    objects = (health(settings.health_url) or {}).get("objects")
    return objects if isinstance(objects, int) else -1


def edge_healthy(settings: Settings, timeout: float = 2.0) -> bool:
    """The edge's health endpoint answers 200."""
    try:
        with urllib.request.urlopen(settings.health_url, timeout=timeout) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


class Proc:
    """A heatcache command with its output kept in ``lines``."""

    def __init__(self, settings: Settings, *args: str, env: dict[str, str] | None = None) -> None:
        full = {**os.environ, **settings_env(settings), **(env or {})}
        self.settings = settings
        self.lines: list[str] = []
        self.proc = subprocess.Popen([sys.executable, "-m", "heatcache.cli", *args], env=full,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_line(self, text: str, timeout: float = 120.0) -> None:
        wait_for(lambda: any(text in line for line in self.lines) or self.proc.poll() is not None, timeout,
                 f"{text!r} in the output")
        if not any(text in line for line in self.lines):
            raise AssertionError(f"exited with {self.proc.returncode} before {text!r}:\n{self.output[-3000:]}")

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    def children(self) -> dict[str, int]:
        """name -> pid of what the stack recorded (stages, kafka, aria2c)."""
        record = json.loads((self.settings.state_dir / "stack.pids.json").read_text())
        return {name: pid for name, (pid, _st) in record["children"].items()}

    def exit_code(self, timeout: float = 60.0) -> int:
        """Wait for the command to end by itself; its status."""
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def finish(self, timeout: float = 60.0) -> int:
        """SIGTERM unless it already ended; its status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code


def alive(pid: int) -> bool:
    return start_time(pid) is not None


def state_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
