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
    hot = HotUrl("http://k/", "http://k/", "k", 3, 2, 86400, 1.0)
    assert contract.decode(contract.encode(hot), HotUrl) == hot
    ce = CacheEvent("http://k/", "cached", path="objects/ab/abc", size=3)
    assert contract.decode(contract.encode(ce), CacheEvent) == ce
    refused = CacheEvent("http://k/", "failed", size=9000, error="over the cap", refused=True)
    assert contract.decode(contract.encode(refused), CacheEvent) == refused


def test_every_message_is_versioned() -> None:
    body = orjson.loads(contract.encode(HotUrl("http://h/", "http://h/", "h", 1, 1, 1, 1.0)))
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
        contract.decode(contract.encode(HotUrl("http://h/", "http://h/", "h", 1, 1, 1, 1.0)), CacheEvent)


def test_bucket_is_stable() -> None:
    assert contract.bucket_of("http://example.com/a", 3) == contract.bucket_of("http://example.com/a", 3)
    assert {contract.bucket_of(f"k{i}", 4) for i in range(100)} == {0, 1, 2, 3}


def test_dead_letter_value_keeps_the_bytes() -> None:
    body = orjson.loads(contract.dead_letter_value("requests", 1, 7, "not JSON", b"\xff{"))
    assert body["topic"] == "requests" and body["offset"] == 7 and body["value"] == "\\xff{"


HOT = {"v": 1, "kind": "hot", "cache_key": "http://h/a", "url": "http://h/a?t=1", "host": "h", "heat": 2,
       "clients": 2, "window_s": 60, "ts": 1700000000.0}
CACHE = {"v": 1, "kind": "cache", "cache_key": "http://h/a", "state": "cached", "size": 3}


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({**HOT, "cache_key": 123}, "cache_key: must be a string"),
        ({**HOT, "heat": True}, "heat: must be an integer"),
        ({**HOT, "heat": 2.5}, "heat: must be an integer"),
        ({**HOT, "heat": -1}, "heat: -1 outside"),
        ({**HOT, "ts": False}, "ts: must be a number"),
        ({**HOT, "ts": 1e300}, "ts: "),
        ({**HOT, "url": "ftp://h/a"}, "not an http"),
        ({**HOT, "url": "http://user:pw@h/a"}, "credentials"),
        ({**HOT, "url": "http://h/a b"}, "whitespace"),
        ({**HOT, "url": "http://h/" + "a" * contract.MAX_URL_LEN}, "longer than"),
        ({**HOT, "host": ""}, "host: length 0"),
        ({**HOT, "reason": ["x"]}, "reason: must be a string"),
        ({**CACHE, "state": "weird"}, "state"),
        ({**CACHE, "size": "3"}, "size: must be an integer"),
        ({**CACHE, "etag": "x" * (contract.MAX_HEADER_LEN + 1)}, "etag: length"),
        ({**CACHE, "v": True}, "schema version"),
        ({**CACHE, "state": "failed", "refused": 1}, "refused: must be true or false"),
        ({**CACHE, "refused": True}, "only a failed fetch is refused"),
    ],
)
def test_strict_decoding_names_the_field(body: dict[str, object], why: str) -> None:
    expect = HotUrl if body["kind"] == "hot" else CacheEvent
    with pytest.raises(DecodeError, match=why.replace("(", r"\(")):
        contract.decode(orjson.dumps(body), expect)


def test_ints_are_accepted_as_times_and_long_etags_are_kept() -> None:
    hot = contract.decode(orjson.dumps({**HOT, "ts": 1700000000}), HotUrl)
    assert hot.ts == 1700000000.0 and isinstance(hot.ts, float)
    etag = '"' + "e" * 400 + '"'  # longer than VARCHAR(255): carried whole
    assert contract.decode(orjson.dumps({**CACHE, "etag": etag}), CacheEvent).etag == etag


@pytest.mark.parametrize(
    "row",
    [
        [True, "c", "GET", "h", "/", "http://h/", "http://h/", "", ""],
        [float("nan"), "c", "GET", "h", "/", "http://h/", "http://h/", "", ""],
        [1.0, "c", "GET", "h", "/", "http://h/", "http://h/" + "k" * contract.MAX_KEY_LEN, "", ""],
        [1.0, "c", "GET", "h", "/", "http://h/", "http://h/", "bytes=" + "1" * 300, ""],
    ],
)
def test_bad_request_rows_refuse_the_batch(row: list[object]) -> None:
    raw = orjson.dumps({"v": 1, "kind": "batch", "bucket": 0, "events": [row]})
    with pytest.raises(DecodeError):
        contract.decode(raw, RequestBatch)
    assert contract.request_event_error(RequestEvent(*row)) is not None  # type: ignore[arg-type]


def test_event_types_are_declared_field_by_field() -> None:
    from dataclasses import dataclass

    with pytest.raises(TypeError, match="checks for"):
        @contract.event_type("half-declared", a=contract.Int())
        @dataclass(frozen=True)
        class Half:
            a: int
            b: str

    @contract.event_type("test-kind", host=contract.HOST, n=contract.Int(1, 5))
    @dataclass(frozen=True)
    class Custom:
        host: str
        n: int = 1

    assert contract.decode(contract.encode(Custom("h", 3)), Custom) == Custom("h", 3)
    with pytest.raises(DecodeError, match=r"n: 9 outside 1\.\.5"):
        contract.decode(b'{"v": 1, "kind": "test-kind", "host": "h", "n": 9}', Custom)


def test_event_time_is_checked_against_the_watermark_not_the_clock() -> None:
    assert contract.event_time_error(1000.0, 0.0, 60) is None  # no watermark yet: accepted
    assert contract.event_time_error(1050.0, 1000.0, 60) is None  # an old trace's own time
    assert "ahead of the stream's watermark" in (contract.event_time_error(5000.0, 1000.0, 60) or "")
