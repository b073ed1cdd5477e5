"""Shared fault fixtures: hostile origins, an inward "secret" service, a small tmpfs.

Every fault case runs against real services (the Kafka/MariaDB/aria2 fixtures of
tests/conftest.py); these add the hostile parts of the world:

- ``secret_service``: an HTTP service on the node's own loopback (127.0.0.1) answering
  ``/secret`` with SECRET_BODY and counting every request: a fetch or pass-through that reaches it
  was redirected inward (the test asserts ``secret_service.asked("/secret") == 0``).
- ``hostile_origin``: a tests/fetcher/origin.py TestOrigin on the lab origin address (127.0.0.2)
  whose routes a test sets: ``hostile_origin.redirect("/a", secret_service.url("/secret"))``,
  ``.routes["/f"] = Route(body, ...)``, ``.once["/x"] = Route(...)`` (the next request only);
  ``hostile_origin.url("/a")``; ``.asked(path)`` requests per path.
- ``tmpfs(size_mb)``: a fresh tmpfs of that size (ENOSPC once full), unmounted afterwards.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from heatcache.lab import ORIGIN_IP
from tests.fetcher.origin import Route, TestOrigin

SECRET_BODY = b"inward-secret-that-must-never-be-cached\n"


@pytest.fixture
def secret_service() -> Iterator[TestOrigin]:
    """An inward service (loopback) holding a secret: no fetch may ever reach it."""
    server = TestOrigin("127.0.0.1").start()
    server.routes["/secret"] = Route(SECRET_BODY, headers={"Content-Type": "application/octet-stream"})
    yield server
    server.stop()


@pytest.fixture
def hostile_origin() -> Iterator[TestOrigin]:
    server = TestOrigin(ORIGIN_IP).start()
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
