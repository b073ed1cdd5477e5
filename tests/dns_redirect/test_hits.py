"""Unit tests for hit semantics (dns_redirect/hits.py): ranges and conditional requests."""

from __future__ import annotations

import pytest

from dns_redirect.hits import etag_for, plan_hit

ETAG = etag_for("ab" * 32, 1000)
LM = "Mon, 23 Nov 2026 08:00:00 GMT"


@pytest.mark.parametrize(
    ("rng", "status", "start", "length", "content_range"),
    [
        ("bytes=100-199", 206, 100, 100, "bytes 100-199/1000"),
        ("bytes=900-", 206, 900, 100, "bytes 900-999/1000"),
        ("bytes=-10", 206, 990, 10, "bytes 990-999/1000"),
        ("bytes=990-5000", 206, 990, 10, "bytes 990-999/1000"),
        ("bytes=1000-", 416, 0, 0, "bytes */1000"),
        ("bytes=-0", 416, 0, 0, "bytes */1000"),
        ("bytes=5-1", 200, 0, 1000, None),  # invalid: ignored
        ("bytes=1-2,5-6", 200, 0, 1000, None),  # multiple ranges: whole object
        ("items=1-2", 200, 0, 1000, None),
    ],
)
def test_ranges(rng: str, status: int, start: int, length: int, content_range: str | None) -> None:
    plan = plan_hit(1000, ETAG, LM, "video/mp4", range_header=rng)
    assert (plan.status, plan.start, plan.length) == (status, start, length)
    assert plan.headers.get("Content-Range") == content_range
    assert plan.headers["X-Cache"] == "HIT" and plan.headers["ETag"] == ETAG


def test_conditionals() -> None:
    assert plan_hit(1000, ETAG, LM, "", if_none_match=ETAG).status == 304
    assert plan_hit(1000, ETAG, LM, "", if_none_match=f'"other", W/{ETAG}').status == 304
    assert plan_hit(1000, ETAG, LM, "", if_none_match='"other"').status == 200
    assert plan_hit(1000, ETAG, LM, "", if_modified_since=LM).status == 304
    assert plan_hit(1000, ETAG, LM, "", if_modified_since="Sun, 22 Nov 2026 08:00:00 GMT").status == 200
    assert plan_hit(1000, ETAG, LM, "", if_modified_since="garbage").status == 200
    # If-None-Match wins over If-Modified-Since (RFC 9110 13.2.2)
    assert plan_hit(1000, ETAG, LM, "", if_none_match='"other"', if_modified_since=LM).status == 200
    # If-Range with a stale validator: the whole object
    assert plan_hit(1000, ETAG, LM, "", range_header="bytes=0-9", if_range='"old"').status == 200
    assert plan_hit(1000, ETAG, LM, "", range_header="bytes=0-9", if_range=ETAG).status == 206
    assert plan_hit(10, etag_for("", 10), "", "").headers["Content-Type"] == "application/octet-stream"
