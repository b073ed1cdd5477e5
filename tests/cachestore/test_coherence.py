"""Unit tests for coherence rules (cachestore/coherence.py)."""

from __future__ import annotations

from cachestore.coherence import (
    DEFAULT_HEURISTIC_S,
    conditional_headers,
    fresh_until,
    refuse_to_store,
    revalidation_outcome,
)

NOW = 1_800_000_000.0


def test_storable() -> None:
    assert refuse_to_store({}, 200, {"Cache-Control": "max-age=60"}) == ""
    assert refuse_to_store({}, 200, {"Cache-Control": "no-store"}) == "no-store"
    assert refuse_to_store({}, 200, {"cache-control": "private"}) == "private"
    assert refuse_to_store({}, 206, {}) == "status 206"
    assert "personalised" in refuse_to_store({"Cookie": "s=1"}, 200, {})
    assert "personalised" in refuse_to_store({"Authorization": "Basic x"}, 200, {"Cache-Control": "max-age=9"})
    assert refuse_to_store({"Cookie": "s=1"}, 200, {"Cache-Control": "public, max-age=9"}) == ""
    assert refuse_to_store({"Authorization": "x"}, 200, {"Cache-Control": "s-maxage=9"}) == ""


def test_freshness() -> None:
    assert fresh_until({"Cache-Control": "max-age=60"}, NOW) == NOW + 60
    assert fresh_until({"Cache-Control": "max-age=60, s-maxage=5"}, NOW) == NOW + 5
    assert fresh_until({"Cache-Control": "no-cache, max-age=60"}, NOW) == NOW
    assert fresh_until({"Date": "Thu, 01 Jan 2026 00:00:00 GMT", "Expires": "Thu, 01 Jan 2026 01:00:00 GMT"},
                       NOW) == NOW + 3600
    assert fresh_until({"Expires": "0"}, NOW) == NOW
    # heuristic: 10 % of the age of Last-Modified (10 days old -> 1 day, the cap)
    assert fresh_until({"Date": "Sun, 11 Jan 2026 00:00:00 GMT", "Last-Modified": "Thu, 01 Jan 2026 00:00:00 GMT"},
                       NOW) == NOW + 86400
    assert fresh_until({"Date": "Thu, 01 Jan 2026 10:00:00 GMT", "Last-Modified": "Thu, 01 Jan 2026 00:00:00 GMT"},
                       NOW) == NOW + 3600
    assert fresh_until({}, NOW) == NOW + DEFAULT_HEURISTIC_S


def test_revalidation() -> None:
    assert conditional_headers('"e"', "Mon") == {"If-None-Match": '"e"', "If-Modified-Since": "Mon"}
    assert conditional_headers("", "") == {}
    assert [revalidation_outcome(s) for s in (304, 200, 404, 410, 500)] == ["fresh", "changed", "gone", "gone",
                                                                            "error"]
