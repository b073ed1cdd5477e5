"""A programmable test origin for the fetcher: redirects, slow bodies, bodies without length, a
lying Content-Length, chunked bodies, resets mid-body, failures that recover, Range (resume)
support, and counters of what it was asked and what it sent."""

from __future__ import annotations

import hashlib
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    rate: int = 0  # bytes per second (0 = as fast as possible)
    chunked: bool = False  # no Content-Length: the body ends when the connection closes
    transfer_chunked: bool = False  # no Content-Length: Transfer-Encoding: chunked, a final 0-chunk
    reset_at: int = 0  # reset the connection after this many body bytes (no final chunk, no FIN)
    delay: float = 0.0  # seconds before the status line of a GET (a slow origin's first byte)
    head_length: int | None = None  # Content-Length announced to HEAD (a 5 GB lie)
    fail_first: int = 0  # answer 500 to this many GETs first


class TestOrigin:
    """``routes[path] = Route(...)`` (``once[path]``: the answer to the next request of the path
    only, then the route's); ``gets``/``heads`` count requests, ``sent`` body bytes,
    ``conditional`` GETs with If-None-Match (a matching one is answered 304),
    ``ranges`` the Range headers of GETs; ``active``/``peak`` concurrent GETs."""

    __test__ = False

    def __init__(self, address: str = "127.0.0.2", port: int = 0) -> None:
        self.routes: dict[str, Route] = {}
        self.once: dict[str, Route] = {}
        self.gets: Counter[str] = Counter()
        self.heads: Counter[str] = Counter()
        self.sent: Counter[str] = Counter()
        self.conditional: Counter[str] = Counter()  # GETs with If-None-Match (revalidations)
        self.ranges: dict[str, list[str]] = {}
        self.lock = threading.Lock()
        self.active = 0
        self.peak = 0
        origin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                origin.heads[self.path] += 1
                self._answer(head=True)

            def do_GET(self) -> None:
                with origin.lock:
                    origin.gets[self.path] += 1
                    origin.active += 1
                    origin.peak = max(origin.peak, origin.active)
                    origin.ranges.setdefault(self.path, []).append(self.headers.get("Range", ""))
                try:
                    self._answer(head=False)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    with origin.lock:
                        origin.active -= 1

            def _answer(self, head: bool) -> None:
                route = origin.once.pop(self.path, None) or origin.routes.get(self.path)
                if route is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if not head and route.fail_first > 0:
                    route.fail_first -= 1
                    self.send_response(500)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if not head and route.delay:
                    time.sleep(route.delay)  # the origin thinking, not a test synchronizing
                body, start = route.body, 0
                status = route.status
                etag = route.headers.get("ETag", '"' + hashlib.sha256(body).hexdigest()[:16] + '"')
                asked = self.headers.get("If-None-Match", "")
                if not head and asked:
                    origin.conditional[self.path] += 1
                if status == 200 and asked and asked == etag:  # unchanged: 304, no body
                    self.send_response(304)
                    for name, value in route.headers.items():
                        if name.lower() in ("etag", "cache-control", "last-modified", "expires"):
                            self.send_header(name, value)
                    if "ETag" not in route.headers:
                        self.send_header("ETag", etag)
                    self.end_headers()
                    return
                rng = self.headers.get("Range", "")
                if status == 200 and rng.startswith("bytes=") and "-" in rng and not route.chunked:
                    first, _, last = rng[6:].partition("-")  # bytes=N- or bytes=N-M (to the end here)
                    if last in ("", str(len(body) - 1)):
                        start = int(first)
                        status = 206
                self.send_response(status)
                for name, value in route.headers.items():
                    self.send_header(name, value)
                if "ETag" not in route.headers:
                    self.send_header("ETag", etag)
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                if route.transfer_chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                elif route.chunked:
                    self.send_header("Connection", "close")
                elif head and route.head_length is not None:
                    self.send_header("Content-Length", str(route.head_length))
                else:
                    self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if head:
                    return
                step = max(1, route.rate // 20) if route.rate else 1 << 16
                for i in range(start, len(body), step):
                    chunk = body[i : i + step]
                    if route.reset_at and i - start + len(chunk) > route.reset_at:
                        self.wfile.flush()
                        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        self.close_connection = True
                        self.connection.close()  # an RST, mid-body
                        return
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if route.transfer_chunked else chunk)
                    self.wfile.flush()
                    origin.sent[self.path] += len(chunk)
                    if route.rate:
                        time.sleep(len(chunk) / route.rate)
                if route.transfer_chunked:
                    self.wfile.write(b"0\r\n\r\n")
                elif route.chunked:
                    self.close_connection = True

        self.server = ThreadingHTTPServer((address, port), Handler)
        self.server.daemon_threads = True
        self.address, self.port = self.server.server_address[:2]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://{self.address}:{self.port}{path}"

    def asked(self, path: str) -> int:
        """Requests (GET and HEAD) of ``path``."""
        return self.gets[path] + self.heads[path]

    def redirect(self, path: str, location: str, status: int = 302) -> None:
        self.routes[path] = Route(status=status, headers={"Location": location})

    def start(self) -> TestOrigin:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
