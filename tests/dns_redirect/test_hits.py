"""Unit tests for hit semantics (dns_redirect/hits.py): ranges and conditional requests, the
hit front's request recognizer and response heads."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dns_redirect.hits import (
    SimpleHead,
    etag_for,
    head_end,
    head_start,
    parse_simple_head,
    plan_growing,
    plan_hit,
    preconditions,
    response_head,
)

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


@pytest.mark.parametrize(
    ("rng", "want"),
    [
        ("", ("whole", 0, 0)),
        ("bytes=0-", ("whole", 0, 0)),  # a player's first ask: the whole object, as a 200
        ("bytes=5-1", ("whole", 0, 0)),  # ignored by the planner: the whole object
        ("items=1-2", ("whole", 0, 0)),
        ("bytes=1-2,5-6", ("whole", 0, 0)),
        ("bytes=100-199", ("range", 100, 199)),  # waits for byte 199 (or the end)
        ("bytes=100-", ("pass", 0, 0)),  # Content-Range must name the last byte: needs the total
        ("bytes=-10", ("pass", 0, 0)),
        ("bytes=-0", ("pass", 0, 0)),
    ],
)
def test_followers_of_a_fill_of_unknown_length(rng: str, want: tuple[str, int, int]) -> None:
    assert plan_growing(rng) == want


def test_preconditions_need_no_length_and_agree_with_the_hit_planner() -> None:
    cases = [({"if_match": '"x"'}, 412), ({"if_match": ETAG}, 0), ({"if_match": "*"}, 0),
             ({"if_unmodified_since": "Sun, 22 Nov 2026 08:00:00 GMT"}, 412), ({"if_unmodified_since": LM}, 0),
             ({"if_match": ETAG, "if_unmodified_since": "Sun, 22 Nov 2026 08:00:00 GMT"}, 0),  # If-Match wins
             ({"if_none_match": f"W/{ETAG}"}, 304), ({"if_modified_since": LM}, 304),
             ({"if_none_match": '"x"', "if_modified_since": LM}, 0),  # If-None-Match wins
             ({"if_match": '"x"', "if_none_match": ETAG}, 412)]  # 412 before 304
    for conditions, want in cases:
        assert preconditions(ETAG, LM, **conditions) == want, conditions
        assert plan_hit(1000, ETAG, LM, "", **conditions).status == (want or 200), conditions


def test_the_origins_validators_are_served_and_never_our_own() -> None:
    plan = plan_hit(1000, '"origin-1"', LM, "")
    assert plan.headers["ETag"] == '"origin-1"' and plan.headers["Last-Modified"] == LM
    plan = plan_hit(1000, "", "", "")  # the origin gave none: we invent none
    assert "ETag" not in plan.headers and "Last-Modified" not in plan.headers
    assert plan_hit(1000, "", "", "", if_none_match='"x"').status == 200
    assert plan_hit(1000, "", "", "", if_none_match="*").status == 304
    assert plan_hit(1000, "", "", "", if_modified_since=LM).status == 200  # nothing to compare with


EARLIER = "Sun, 22 Nov 2026 08:00:00 GMT"
LATER = "Tue, 24 Nov 2026 08:00:00 GMT"
WEAK = 'W/"w1"'


@pytest.mark.parametrize(
    ("etag", "kwargs", "status"),
    [
        # If-Match: strong comparison; a mismatch is 412 whatever else the request says
        (ETAG, {"if_match": ETAG}, 200),
        (ETAG, {"if_match": f'"a", {ETAG}'}, 200),
        (ETAG, {"if_match": "*"}, 200),
        (ETAG, {"if_match": '"other"'}, 412),
        (ETAG, {"if_match": f"W/{ETAG}"}, 412),  # weak never matches strongly
        (WEAK, {"if_match": WEAK}, 412),
        ("", {"if_match": '"x"'}, 412),
        (ETAG, {"if_match": '"other"', "if_none_match": ETAG}, 412),  # If-Match first
        (ETAG, {"if_match": ETAG, "range_header": "bytes=0-9"}, 206),
        # If-Unmodified-Since: only without If-Match; invalid dates ignored
        (ETAG, {"if_unmodified_since": LM}, 200),
        (ETAG, {"if_unmodified_since": LATER}, 200),
        (ETAG, {"if_unmodified_since": EARLIER}, 412),
        (ETAG, {"if_unmodified_since": "garbage"}, 200),
        (ETAG, {"if_match": ETAG, "if_unmodified_since": EARLIER}, 200),  # ignored when If-Match is there
        # If-None-Match: weak comparison
        (WEAK, {"if_none_match": '"w1"'}, 304),
        (WEAK, {"if_none_match": WEAK}, 304),
        # If-Range with a date: exact match with Last-Modified, else the whole object
        (ETAG, {"range_header": "bytes=0-9", "if_range": LM}, 206),
        (ETAG, {"range_header": "bytes=0-9", "if_range": "Mon, 23 Nov 2026 08:00:00 +0000"}, 206),  # same date
        (ETAG, {"range_header": "bytes=0-9", "if_range": LATER}, 200),
        (ETAG, {"range_header": "bytes=0-9", "if_range": EARLIER}, 200),
        (ETAG, {"range_header": "bytes=0-9", "if_range": "garbage"}, 200),
        # If-Range with an entity-tag: strong comparison only
        (ETAG, {"range_header": "bytes=0-9", "if_range": f"W/{ETAG}"}, 200),
        (WEAK, {"range_header": "bytes=0-9", "if_range": WEAK}, 200),
        ("", {"range_header": "bytes=0-9", "if_range": '""'}, 200),
    ],
)
def test_preconditions_follow_rfc_9110(etag: str, kwargs: dict[str, str], status: int) -> None:
    assert plan_hit(1000, etag, LM, "", **kwargs).status == status


def test_if_range_date_without_last_modified_sends_the_whole_object() -> None:
    assert plan_hit(1000, ETAG, "", "", range_header="bytes=0-9", if_range=LM).status == 200


# -- the hit front's request recognizer: plain requests only, everything else to aiohttp


def test_plain_get_and_head_are_recognized() -> None:
    head = parse_simple_head(b"GET /a/b.iso?x=1 HTTP/1.1\r\nHost: mirror.test\r\nRange:  bytes=0-9 \r\n"
                             b"User-Agent: curl/8\r\nConnection: keep-alive")
    assert head == SimpleHead("GET", "/a/b.iso?x=1", False,
                              {"host": "mirror.test", "range": "bytes=0-9", "user-agent": "curl/8",
                               "connection": "keep-alive"}, True)
    assert parse_simple_head(b"HEAD / HTTP/1.1\r\nhOsT: m.test\r\nConnection: close") == SimpleHead(
        "HEAD", "/", False, {"host": "m.test", "connection": "close"}, False)


def test_http10_keeps_alive_only_when_asked() -> None:
    plain = parse_simple_head(b"GET / HTTP/1.0\r\nHost: m.test")
    assert plain is not None and plain.http10 and not plain.keep_alive
    asked = parse_simple_head(b"GET / HTTP/1.0\r\nHost: m.test\r\nConnection: Keep-Alive")
    assert asked is not None and asked.keep_alive


@pytest.mark.parametrize("head", [
    b"POST / HTTP/1.1\r\nHost: m.test",
    b"GET / HTTP/1.1\r\nHost: m.test\r\nContent-Length: 0",  # a body: the full server's job
    b"GET / HTTP/1.1\r\nHost: m.test\r\nTransfer-Encoding: chunked",
    b"GET / HTTP/1.1\r\nHost: m.test\r\nExpect: 100-continue",
    b"GET / HTTP/1.1\r\nHost: m.test\r\nUpgrade: websocket",
    b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test",  # two Hosts: smuggling bait
    b"GET / HTTP/1.1\r\nHost: m.test\r\n folded: line",
    b"GET / HTTP/1.1\r\nHost : m.test",  # whitespace before the colon (RFC 9112 5.1: reject)
    b"GET / HTTP/1.1\r\nHost: m.test\r\nX: a\x00b",
    b"GET / HTTP/1.1\r\nHost: m.test\nX: lf-only",
    b"GET /\xc3\xa9 HTTP/1.1\r\nHost: m.test",
    b"GET / HTTP/1.1",  # no Host in 1.1
    b"GET http://m.test/ HTTP/1.1\r\nHost: m.test",  # absolute form: proxy requests are not hits
    b"GET  / HTTP/1.1\r\nHost: m.test",
    b"GET / HTTP/2.0\r\nHost: m.test",
    b"GET / HTTP/1.1\r\nHost: m.test\r\n",  # an empty header line inside the head
    b"GET / HTTP/1.1\r\nHost: m.test\r\n" + b"X-A: b\r\n" * 120,
    b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: m.test",
    b"",
])
def test_anything_unusual_goes_to_the_full_server(head: bytes) -> None:
    assert parse_simple_head(head) is None


@given(st.binary(max_size=300))
@settings(max_examples=3000)
def test_recognizer_never_raises(data: bytes) -> None:
    head = parse_simple_head(data)
    assert head is None or head.method in ("GET", "HEAD")


def test_response_heads() -> None:
    plan = plan_hit(10, '"e"', "", "text/plain")
    assert response_head(plan, "D", True, False) == (
        b'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nETag: "e"\r\nAccept-Ranges: bytes\r\nX-Cache: HIT\r\n'
        b"Content-Length: 10\r\nDate: D\r\nServer: heatcache\r\n\r\n")
    assert head_end("D", False, False).endswith(b"Connection: close\r\n\r\n")
    assert head_end("D", True, True).endswith(b"Connection: keep-alive\r\n\r\n")
    not_modified = plan_hit(10, '"e"', "", "text/plain", if_none_match='"e"')
    assert b"Content-Length" not in head_start(not_modified) and head_start(not_modified).startswith(
        b"HTTP/1.1 304 Not Modified\r\n")
    unsatisfiable = plan_hit(10, '"e"', "", "", range_header="bytes=50-")
    assert b"Content-Length: 0\r\n" in head_start(unsatisfiable)
