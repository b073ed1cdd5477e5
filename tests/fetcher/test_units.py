"""Unit tests for the fetcher's pure parts: pre-flight judgement and heads (fetcher/preflight.py), offset
bookkeeping (fetcher/offsets.py) and back-off."""

from __future__ import annotations

import http.client

import pytest

from fetcher.app import backoff
from fetcher.offsets import OffsetTracker
from fetcher.preflight import Preflight, judge, parse_head, request_head
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


def test_preflight_request_and_answer_heads() -> None:
    hop = parse_hop("http://a.example:8080/v/x.mp4?q=1")
    assert request_head("HEAD", hop) == (b"HEAD /v/x.mp4?q=1 HTTP/1.1\r\nHost: a.example:8080\r\n"
                                         b"User-Agent: heatcache-fetcher\r\nAccept-Encoding: identity\r\n"
                                         b"Connection: close\r\n\r\n")
    status, headers = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nETag: \"e\"\r\n"
                                 b"Cache-Control: max-age=60\r\ncache-control: public\r\n\r\n")
    assert status == 200
    assert headers == {"content-length": "12", "etag": '"e"', "cache-control": "max-age=60, public"}
    assert parse_head(b"HTTP/1.0 302\r\nLocation: /y\r\n\r\n") == (302, {"location": "/y"})
    for bad in (b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 2000 OK\r\n\r\n", b"HTTP/2 200\r\n\r\n", b"\r\n\r\n"):
        with pytest.raises(http.client.BadStatusLine):
            parse_head(bad)
