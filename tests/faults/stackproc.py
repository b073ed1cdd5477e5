"""`heatcache up` (or one stage) as a real child process for the fault cases: its output
collected line by line, conditions polled with deadlines, the children read from the stack's
record (``<state_dir>/stack.pids.json``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from heatcache.services.procs import start_time
from heatcache.settings import Settings
from heatcache.stack import settings_env


def wait_for(cond: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


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
