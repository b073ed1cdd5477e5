"""Shared fault fixtures: hostile origins, an inward "secret" service, a small tmpfs.

Every fault case runs against real services (the Kafka/MariaDB/aria2 fixtures of
tests/conftest.py); these add the hostile parts of the world:

- ``secret_service``: an HTTP service on the node's own loopback (127.0.0.1) answering
  ``/secret`` with SECRET_BODY and counting every request: a fetch or pass-through that reaches it
  was redirected inward (the test asserts ``secret_service.hits == 0``).
- ``hostile_origin``: an HTTP origin on the lab origin address (127.0.0.2) whose routes a test sets:
  ``hostile_origin.redirect("/a", secret_service.url("/secret"))``, ``.serve("/f", body, headers)``,
  ``.route("/x", status, headers, body)``, ``.route_once(...)`` (the next request only);
  ``hostile_origin.url("/a")``; ``.hits`` per path.
- ``tmpfs(size_mb)``: a fresh tmpfs of that size (ENOSPC once full), unmounted afterwards.
"""

from __future__ import annotations

import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from heatcache.lab import ORIGIN_IP

SECRET_BODY = b"inward-secret-that-must-never-be-cached\n"


class ScriptedOrigin:
    """A threaded HTTP/1.1 server whose answers are set per path by the test."""

    def __init__(self, address: str, port: int = 0) -> None:
        self.routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.once: dict[str, tuple[int, dict[str, str], bytes]] = {}  # the next request only
        self.hits: Counter[str] = Counter()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: object) -> None:
                pass

            def _answer(self, body: bool) -> None:
                path = self.path.split("?")[0]
                owner.hits[path] += 1
                once = owner.once.pop(path, None)
                status, headers, data = once or owner.routes.get(path, (404, {}, b""))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def do_GET(self) -> None:
                self._answer(True)

            def do_HEAD(self) -> None:
                self._answer(False)

        self.server = ThreadingHTTPServer((address, port), Handler)
        self.server.daemon_threads = True
        self.address, self.port = self.server.server_address[:2]
        self._thread = threading.Thread(target=self.server.serve_forever, name="scripted-origin", daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://{self.address}:{self.port}{path}"

    def route(self, path: str, status: int, headers: dict[str, str] | None = None, body: bytes = b"") -> None:
        self.routes[path] = (status, headers or {}, body)

    def route_once(self, path: str, status: int, headers: dict[str, str] | None = None, body: bytes = b"") -> None:
        """The answer to the next request of ``path`` only (a pre-flight), then the route's."""
        self.once[path] = (status, headers or {}, body)

    def serve(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.route(path, 200, {"Content-Type": "application/octet-stream", **(headers or {})}, body)

    def redirect(self, path: str, location: str, status: int = 302) -> None:
        self.route(path, status, {"Location": location})

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def secret_service() -> Iterator[ScriptedOrigin]:
    server = ScriptedOrigin("127.0.0.1")
    server.serve("/secret", SECRET_BODY)
    yield server
    server.stop()


@pytest.fixture
def hostile_origin() -> Iterator[ScriptedOrigin]:
    server = ScriptedOrigin(ORIGIN_IP)
    yield server
    server.stop()


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """``tmpfs(20)`` mounts a 20 MB tmpfs and returns its path (needs root, as the test machines run)."""
    mounted: list[Path] = []

    def make(size_mb: int) -> Path:
        where = tmp_path / f"tmpfs{len(mounted)}"
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.fail(f"cannot mount a tmpfs (the fault suite needs root): {done.stderr.strip()}")
        mounted.append(where)
        return where

    yield make
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], check=False)
