"""Helpers for the edge tests: the lab's view of a running Edge and starting/stopping one on
its own event-loop thread (the fixture that builds the lab is in conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
from dataclasses import dataclass

from dns_redirect.edge import Edge
from heatcache.lab import NODE_IP, Origin
from tests.loopthread import on_loop_thread

# the validators the lab's cached object carries from its origin (the edge serves these)
ORIGIN_ETAG = '"origin-v1"'
ORIGIN_LM = "Mon, 23 Nov 2026 08:00:00 GMT"


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


def serving_edge(edge: Edge, host: str, port: int) -> contextlib.AbstractContextManager[asyncio.AbstractEventLoop]:
    """The edge listening on host:port on its own loop thread, as `heatcache edge` runs it."""
    return on_loop_thread(lambda: edge.start(host, port), edge.stop, stop_timeout=10)
