"""Unit tests for coherence rules (cachestore/coherence.py)."""

from __future__ import annotations

from cachestore.coherence import (
    DEFAULT_HEURISTIC_S,
    after_error,
    after_not_modified,
    conditional_headers,
    due_for_revalidation,
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


def test_revalidation_schedule() -> None:
    assert due_for_revalidation(NOW, 0.0, NOW, 60)  # freshness ended now
    assert not due_for_revalidation(NOW + 1, 0.0, NOW, 60)  # still fresh
    assert due_for_revalidation(0.0, 0.0, NOW, 60)  # unknown freshness (a migrated row): at once
    assert not due_for_revalidation(NOW - 100, NOW - 30, NOW, 60)  # asked 30 s ago: not yet again
    assert after_error(NOW - 10, NOW, 60) == "keep" and after_error(NOW - 61, NOW, 60) == "evict"


def test_a_304_updates_validators_and_freshness() -> None:
    stored = {"etag": '"v1"', "last-modified": "Mon, 23 Nov 2026 08:00:00 GMT", "cache-control": "max-age=60"}
    same = after_not_modified(stored, {"ETag": '"v1"'}, NOW)
    assert same["etag"] == '"v1"' and float(same["fresh-until"]) == NOW + 60  # the stored max-age again
    moved = after_not_modified(stored, {"ETag": '"v2"', "Cache-Control": "max-age=5"}, NOW)
    assert moved["etag"] == '"v2"' and moved["cache-control"] == "max-age=5" and float(moved["fresh-until"]) == NOW + 5
    assert moved["last-modified"] == stored["last-modified"]
    bare = after_not_modified({"etag": '"v1"', "cache-control": ""}, {}, NOW)  # no lifetime anywhere: heuristic
    assert float(bare["fresh-until"]) == NOW + DEFAULT_HEURISTIC_S and "cache-control" not in bare
