"""Unit tests for the event contract (heatcache/contract.py)."""

from __future__ import annotations

import orjson
import pytest

from heatcache import contract
from heatcache.contract import CacheEvent, DecodeError, HotUrl, RequestBatch, RequestEvent

EV = RequestEvent(1700000000.5, "c1", "GET", "example.com", "/a?b", "http://example.com/a?b",
                  "http://example.com/a?b", "bytes=0-9", "browser")


def test_round_trips() -> None:
    batch = RequestBatch(bucket=2, events=(EV, EV))
    assert contract.decode(contract.encode(batch), RequestBatch) == batch
    hot = HotUrl("k", "http://k/", "k", 3, 2, 86400, 1.0)
    assert contract.decode(contract.encode(hot), HotUrl) == hot
    ce = CacheEvent("k", "cached", path="objects/ab/abc", size=3)
    assert contract.decode(contract.encode(ce), CacheEvent) == ce


def test_every_message_is_versioned() -> None:
    body = orjson.loads(contract.encode(HotUrl("k", "u", "h", 1, 1, 1, 1.0)))
    assert body["v"] == contract.SCHEMA_VERSION and body["kind"] == "hot"


@pytest.mark.parametrize(
    "raw",
    [
        None, b"", b"not json", b"[]", b'{"v": 99, "kind": "hot"}', b'{"v": 1, "kind": "cache"}',
        b'{"v": 1, "kind": "cache", "cache_key": "k", "state": "weird"}',
        b'{"v": 1, "kind": "batch", "bucket": 0, "events": [[1, 2]]}',
        b'{"v": 1, "kind": "batch", "bucket": 0, "events": [["x","c","GET","h","/","u","k","",""]]}',
        b'{"v": 1, "kind": "hot", "cache_key": "k"}',
        b'{"v": 1, "kind": "hot", "cache_key": "k", "url": "u", "host": "h", "heat": 1, "clients": 1,'
        b' "window_s": 1, "ts": 1, "surprise": 1}',
    ],
)
def test_poison_messages_raise_decode_error(raw: bytes | None) -> None:
    with pytest.raises(DecodeError):
        contract.decode(raw, HotUrl if raw and b'"hot"' in raw else
                        CacheEvent if raw and b"cache" in raw else RequestBatch)


def test_kind_must_match() -> None:
    with pytest.raises(DecodeError, match="expected"):
        contract.decode(contract.encode(HotUrl("k", "u", "h", 1, 1, 1, 1.0)), CacheEvent)


def test_bucket_is_stable() -> None:
    assert contract.bucket_of("http://example.com/a", 3) == contract.bucket_of("http://example.com/a", 3)
    assert {contract.bucket_of(f"k{i}", 4) for i in range(100)} == {0, 1, 2, 3}


def test_dead_letter_value_keeps_the_bytes() -> None:
    body = orjson.loads(contract.dead_letter_value("requests", 1, 7, "not JSON", b"\xff{"))
    assert body["topic"] == "requests" and body["offset"] == 7 and body["value"] == "\\xff{"
