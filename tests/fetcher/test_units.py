"""Unit tests for the fetcher's pure parts: pre-flight judgement (fetcher/preflight.py), offset
bookkeeping (fetcher/offsets.py) and back-off."""

from __future__ import annotations

from fetcher.app import backoff
from fetcher.offsets import OffsetTracker
from fetcher.preflight import Preflight, judge
from heatcache.redirects import parse_hop


def pre(status: int = 200, **headers: str) -> Preflight:
    return Preflight(parse_hop("http://a.example/x"), "203.0.113.1", status, headers)


def test_judge() -> None:
    assert judge(pre(**{"content-length": "100"}), cap=100) == ""
    assert "over the cap" in judge(pre(**{"content-length": str(5 * 1024**3)}), cap=1024)
    assert judge(pre(404), cap=1) == "origin answered status 404"
    assert "no-store" in judge(pre(**{"cache-control": "no-store"}), cap=1)
    assert "private" in judge(pre(**{"cache-control": "Private"}), cap=1)
    assert "cookie" in judge(pre(**{"set-cookie": "a=b"}), cap=1)
    assert "encoded" in judge(pre(**{"content-encoding": "gzip"}), cap=1)
    assert pre(**{"content-length": "12"}).length == 12 and pre().length is None
    assert pre().pinned == "http://203.0.113.1:80/x"


def test_offsets_wait_for_earlier_messages() -> None:
    t = OffsetTracker()
    for off in (5, 6, 7):
        t.add("hot", 0, off)
    t.add("hot", 1, 3)
    assert t.done("hot", 0, 6) is None  # 5 still in flight
    assert t.done("hot", 0, 5) == 7  # 5 and 6 done: resume at 7
    assert t.done("hot", 1, 3) == 4
    assert t.done("hot", 0, 7) == 8 and t.pending() == 0
    t.forget("hot", 0)
    t.add("hot", 0, 2)  # redelivered after a rebalance
    assert t.done("hot", 0, 2) == 3


def test_backoff_is_exponential_and_capped() -> None:
    assert [backoff(n, 1.0, cap=10.0) for n in (1, 2, 3, 4, 5)] == [1.0, 2.0, 4.0, 8.0, 10.0]
