"""A server started on its own event loop in a thread, as its CLI stage runs it, while the test
talks to it from the main thread with real (blocking) clients."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager


@contextmanager
def on_loop_thread(start: Callable[[], Awaitable[object]], stop: Callable[[], Awaitable[object]],
                   stop_timeout: float = 5.0) -> Iterator[asyncio.AbstractEventLoop]:
    """Run ``start()`` on a new loop in a daemon thread, yield the loop, then ``stop()`` there and
    let closing transports finish before the loop is closed."""
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield loop
    finally:
        asyncio.run_coroutine_threadsafe(stop(), loop).result(stop_timeout)  # type: ignore[arg-type]
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0.2), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
