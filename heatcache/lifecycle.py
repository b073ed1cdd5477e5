"""One life cycle for every long-running stage: start, run until told to stop, stop cleanly.

SIGTERM (what Kubernetes sends) and SIGINT set a stop flag; the stage's loop checks it, then
flushes producers and commits offsets before returning.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

log = logging.getLogger(__name__)


class StopFlag:
    """A thread-safe stop request, set by SIGTERM/SIGINT or by code (tests, the stack)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._callbacks: list[Callable[[], None]] = []

    def install(self) -> StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        self.set()

    def on_stop(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def set(self) -> None:
        if not self._event.is_set():
            self._event.set()
            for cb in self._callbacks:
                cb()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)


def setup_logging(stage: str, level: str = "INFO") -> None:
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s {stage:<8} %(levelname)-7s %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )


READY_MARK = "heatcache-ready"


def announce_ready(stage: str) -> None:
    """The line `heatcache up` (and the tests) wait for before using a stage."""
    logging.getLogger("heatcache").warning("%s %s", READY_MARK, stage)
