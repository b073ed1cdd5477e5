"""The edge's one routing decision (dns_redirect/route.py), pure: no sockets, time passed in."""

from __future__ import annotations

import pytest

from dns_redirect.index import CacheIndex
from dns_redirect.route import Hit, KeyMemo, Pass, Passthrough, Refuse, route
from heatcache.cachekey import KeyRules
from heatcache.contract import CacheEvent


@pytest.fixture
def index() -> CacheIndex:
    idx = CacheIndex()
    idx.apply(CacheEvent("http://cdn.test/a.bin", "cached", path="objects/aa/a"))
    idx.apply(CacheEvent("http://old.test/x", "cached", path="objects/aa/x"))
    idx.apply(CacheEvent("http://old.test/x", "evicted"), now=100.0)  # old.test unsteered at t=100
    return idx


def decide(index: CacheIndex, method: str = "GET", host: str = "cdn.test", target: str = "/a.bin",
           via: tuple[str, ...] = (), now: float = 110.0) -> object:
    return route(method, host, target, via, index, KeyMemo(KeyRules.load()), 60.0, now)


def test_hits_misses_and_writes(index: CacheIndex) -> None:
    hit = decide(index)
    assert isinstance(hit, Hit) and hit.entry.path == "objects/aa/a" and hit.version == index.version
    assert hit.key == "http://cdn.test/a.bin" and (hit.host, hit.port) == ("cdn.test", 80)
    assert isinstance(decide(index, method="HEAD"), Hit)
    assert decide(index, target="/b.bin") == Pass("cdn.test", 80, "http://cdn.test/b.bin")
    assert decide(index, host="cdn.test:8080", target="/a.bin") == Pass("cdn.test", 8080, "http://cdn.test:8080/a.bin")
    # writes reach the site and are never stored, even for a cached key
    assert decide(index, method="POST") == Passthrough("cdn.test", 80, "http://cdn.test/a.bin")
    assert isinstance(decide(index, method="DELETE", target="/b"), Passthrough)


def test_refusals_in_order(index: CacheIndex) -> None:
    assert decide(index, method="TRACE") == Refuse(405, "method", "method not allowed\n")
    assert decide(index, method="CONNECT", via=("1.1 heatcache",)).reason == "method"  # type: ignore[attr-defined]
    assert decide(index, via=("1.0 other, 1.1 heatcache",)).reason == "loop"  # type: ignore[attr-defined]
    assert decide(index, host="bad host").reason == "bad-request"  # type: ignore[attr-defined]
    assert decide(index, host="").reason == "bad-request"  # type: ignore[attr-defined]
    assert decide(index, host="elsewhere.test").reason == "not-steered"  # type: ignore[attr-defined]
    assert decide(index, method="POST", host="elsewhere.test").reason == "not-steered"  # type: ignore[attr-defined]


def test_a_host_unsteered_moments_ago_is_still_served(index: CacheIndex) -> None:
    """Clients may hold our DNS answer for up to a TTL: two TTLs of grace, then refused."""
    assert decide(index, host="old.test", target="/y", now=150.0) == Pass("old.test", 80, "http://old.test/y")
    assert decide(index, host="old.test", target="/y", now=161.0).reason == "not-steered"  # type: ignore[attr-defined]


def test_key_memo_is_bounded_and_raises_on_bad_hosts() -> None:
    memo = KeyMemo(KeyRules.load(), limit=2)
    for i in range(5):
        assert memo(f"h{i}.test", "/") == (f"http://h{i}.test/", f"h{i}.test", 80)
    assert len(memo._memo) <= 2
    with pytest.raises(ValueError):
        memo("bad host", "/")


def test_a_non_ascii_digit_port_is_a_bad_request(index: CacheIndex) -> None:
    """str.isdigit() accepts superscripts; int() does not: this must be a 400, not a crash."""
    assert decide(index, host="cdn.test:¹").reason == "bad-request"  # type: ignore[attr-defined]
