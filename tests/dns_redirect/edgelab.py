"""Helpers for the edge tests: the lab's view of a running Edge and starting/stopping one on
its own event-loop thread (the fixture that builds the lab is in conftest.py)."""

from __future__ import annotations

import asyncio
import http.client
import threading
from dataclasses import dataclass

from dns_redirect.edge import Edge
from heatcache.lab import NODE_IP, Origin


@dataclass
class EdgeLab:
    port: int
    edge: Edge
    origin: Origin
    files: dict[str, bytes]

    def get(self, path: str, host: str = "origin.lab.test", method: str = "GET",
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(NODE_IP, self.port, timeout=10)
        try:
            conn.request(method, path, headers={"Host": f"{host}:{self.port}", **(headers or {})})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()


def start_edge(edge: Edge, host: str, port: int) -> tuple[asyncio.AbstractEventLoop, Edge, threading.Thread]:
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(edge.start(host, port))
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    return loop, edge, thread


def stop_edge(loop: asyncio.AbstractEventLoop, edge: Edge, thread: threading.Thread) -> None:
    asyncio.run_coroutine_threadsafe(edge.stop(), loop).result(10)
    asyncio.run_coroutine_threadsafe(asyncio.sleep(0.2), loop).result(5)  # let closing transports finish
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()
