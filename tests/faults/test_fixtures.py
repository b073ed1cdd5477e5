"""The shared fault fixtures do what they say (so a fault case failing means the code, not them)."""

from __future__ import annotations

import errno
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.conftest import SECRET_BODY
from tests.fetcher.origin import TestOrigin


def test_hostile_origin_redirects_inward(hostile_origin: TestOrigin, secret_service: TestOrigin) -> None:
    hostile_origin.redirect("/video.bin", secret_service.url("/secret"))
    # urllib follows redirects like a naive fetcher would: it lands on the inward service
    assert urllib.request.urlopen(hostile_origin.url("/video.bin"), timeout=5).read() == SECRET_BODY
    assert secret_service.asked("/secret") == 1 and hostile_origin.asked("/video.bin") == 1
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(hostile_origin.url("/nothing"), timeout=5)


def test_tmpfs_fills_up(tmpfs: Callable[[int], Path]) -> None:
    root = tmpfs(1)
    with pytest.raises(OSError) as err, open(root / "big", "wb") as out:
        for _ in range(4):
            out.write(b"x" * (1 << 20))
            out.flush()
    assert err.value.errno == errno.ENOSPC
