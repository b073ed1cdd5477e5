"""The compiled decode of `requests` messages (streams._fold.rows) against the contract.

heatcache.contract.decode(raw, RequestBatch) is the reference. For every message, rows(raw)
either gives None (the worker then decodes with the contract) or the contract accepts the
message and its events, as tuples, are exactly the rows. The messages are the encoder's own
(the plain subset rows must take: the worker's fast path) and mutations of them that hit the
contract's checks: field caps at the edge, non-ASCII, escapes, bad numbers, wrong shapes,
unknown, repeated and replay fields, whitespace, truncation and random byte edits.
"""

from __future__ import annotations

import math
import random

import orjson
import pytest

from heatcache import contract
from heatcache.contract import REQUEST_FIELD_CAPS, DecodeError, RequestBatch, RequestEvent
from streams import _fold  # imported unconditionally: no skip, the build must work

CAPS = dict(enumerate(REQUEST_FIELD_CAPS, start=1))


def text(rnd: random.Random, cap: int) -> str:
    r = rnd.random()
    if r < 0.1:
        return "x" * rnd.choice((cap, cap + 1, cap - 1 if cap else 0))
    if r < 0.15:
        return rnd.choice(("é", "\u2603", "a\"b", "a\\b", "tab\there", "\x01", "\x7f", "/ok"))
    if r < 0.2:
        return ""
    return "".join(rnd.choice("abcdefghijklmnop/.:?=&-_ ~%") for _ in range(rnd.randrange(1, 30)))


def event(rnd: random.Random) -> list[object]:
    r = rnd.random()
    ts: object
    if r < 0.6:
        ts = round(rnd.uniform(0, contract.MAX_TS), rnd.choice((0, 3, 6)))
    elif r < 0.7:
        ts = rnd.randrange(0, int(contract.MAX_TS) + 2)
    else:
        ts = rnd.choice((0, 0.0, contract.MAX_TS, contract.MAX_TS + 1, -1, -0.0, 1e-300, 5e-324, 1.5e9, 2**63,
                         True, None, "1", 1.7976931348623157e308))
    return [ts, *(text(rnd, CAPS[i]) if rnd.random() < 0.3 else f"f{i}-{rnd.randrange(50)}" for i in range(1, 9))]


def encoded(rnd: random.Random) -> bytes:
    events = [event(rnd) for _ in range(rnd.randrange(0, 6))]
    body: dict[str, object] = {"v": 1, "kind": "batch", "bucket": rnd.choice((0, 1, 7, 65535, 65536, -1)),
                               "events": events}
    return orjson.dumps(body)


def mutate(rnd: random.Random, raw: bytes) -> bytes:
    r = rnd.randrange(12)
    if r == 0 and raw:  # a random byte changed
        i = rnd.randrange(len(raw))
        return raw[:i] + bytes([rnd.randrange(256)]) + raw[i + 1:]
    if r == 1 and raw:  # truncated
        return raw[:rnd.randrange(len(raw))]
    if r == 2:  # whitespace between tokens (JSON allows it) or where it does not belong
        i = rnd.randrange(len(raw) + 1)
        return raw[:i] + rnd.choice((b" ", b"\n", b"\t", b"\r", b"\x0b", b"\xc2\xa0")) + raw[i:]
    if r == 3:
        v = rnd.choice((b'"v":1.0', b'"v":true', b'"v":01', b'"v":2', b'"v":1e0', b'"v": 1'))
        return raw.replace(b'"v":1', v)
    if r == 4:
        kind = rnd.choice((b'"kind":"hot"', b'"kind":"batch "', b'"kind":"b\\u0061tch"'))
        return raw.replace(b'"kind":"batch"', kind)
    if r == 5:  # a repeated, an unknown or a replay field
        extra = rnd.choice((b'"v":1,', b'"bucket":2,', b'"x":1,', b'"sizes":[],', b'"statuses":[1],',
                            b'"events":[],'))
        return raw[:1] + extra + raw[1:]
    if r == 6:  # the fields in another order
        return raw.replace(b'{"v":1,"kind":"batch",', b'{"kind":"batch",', 1).replace(b"}", b',"v":1}', 1) \
            if raw.endswith(b"}") else raw
    if r == 7:  # a number written another way
        number = rnd.choice((b"[1.0e+0", b"[01", b"[1.", b"[.5", b"[-0", b"[1E2", b"[1e-2", b"[0.1"))
        return raw.replace(b"[1", number, 1)
    if r == 8:  # an event with 8 or 10 fields, or not an array
        return raw.replace(b',"f8-', rnd.choice((b',"x","f8-', b',"f8-', b']')), 1)
    if r == 9:
        return raw + rnd.choice((b" ", b"x", b"}", b"\n\n", b"\x00"))
    if r == 10:
        return rnd.choice((b"", b"{}", b"[]", b"null", b'{"v":1,"kind":"batch"}', b'{"v":1,"kind":"batch","bucket":0}',
                           b'{"v":1,"kind":"batch","bucket":0,"events":[[]]}',
                           b'{"v":1,"kind":"batch","bucket":0,"events":{}}'))
    return raw


def check(raw: bytes) -> str:
    """rows(raw) against the contract: 'rows' (taken), 'fallback' (None)."""
    got = _fold.rows(raw)
    if got is None:
        return "fallback"
    try:
        batch = contract.decode(raw, RequestBatch)
    except DecodeError as exc:  # pragma: no cover - the failure this test is for
        pytest.fail(f"rows accepted what the contract refuses ({exc}): {raw[:300]!r}")
    want = [tuple(e) for e in batch.events]
    assert got == want, raw[:300]
    for g, w in zip(got, want, strict=True):  # same float, sign of zero included; same types
        assert type(g[0]) is float and math.copysign(1.0, g[0]) == math.copysign(1.0, w[0])
        assert all(type(f) is str for f in g[1:])
    return "rows"


def test_rows_equal_the_contract_or_fall_back() -> None:
    rnd = random.Random(16)
    seen = {"rows": 0, "fallback": 0}
    for _ in range(6000):
        raw = encoded(rnd)
        for _ in range(rnd.randrange(0, 3)):
            raw = mutate(rnd, raw)
        seen[check(raw)] += 1
    assert seen["rows"] > 500 and seen["fallback"] > 500, seen


def test_the_encoders_batches_take_the_fast_path() -> None:
    # what the sniffer writes must not fall back (else the worker's fast path is dead code)
    events = tuple(RequestEvent(1_780_000_000.0 + i / 7, f"c{i:05d}", "GET", "h.example", f"/o/{i}",
                                f"http://h.example/o/{i}", f"http://h.example/o/{i}", "bytes=0-9" * (i % 2), "curl")
                   for i in range(100))
    raw = contract.encode(RequestBatch(3, events))
    assert check(raw) == "rows"
    assert _fold.rows(raw) == list(events)
    assert check(contract.encode(RequestBatch(0, ()))) == "rows"
    assert check(contract.encode(RequestBatch(0, events[:2], sizes=(1, 2)))) == "fallback"  # replay: the contract


def test_field_caps_are_the_contracts() -> None:
    # the C copy of REQUEST_FIELD_CAPS: each cap is accepted, one more character is not
    base = ["c", "GET", "h", "/p", "http://h/p", "http://h/p", "", ""]
    for i, cap in enumerate(REQUEST_FIELD_CAPS):
        for n, taken in ((cap, "rows"), (cap + 1, "fallback")):
            fields = list(base)
            fields[i] = "y" * n
            raw = contract.encode(RequestBatch(0, (RequestEvent(1.0, *fields),))) if n == cap else \
                b'{"v":1,"kind":"batch","bucket":0,"events":[[1.0,' + b",".join(
                    b'"' + f.encode() + b'"' for f in fields) + b"]]}"
            assert check(raw) == taken, (i, n)


def test_short_decimals_are_strtods() -> None:
    # rows reads ts of up to 15 digits without strtod (m / 10^k): the same double as float()
    rnd = random.Random(1616)
    spans = ["0", "0.0", "1", "4102444800", "4102444800.0", "0.000000000000001", "999999999999999",
             "99999999999999.9", "1780000000.123456", "1780000000.1234567", "0.1", "0.30000000000000004"]
    for _ in range(3000):
        whole = str(rnd.randrange(0, 4_102_444_801))
        frac = "".join(rnd.choice("0123456789") for _ in range(rnd.randrange(0, 9)))
        spans.append(f"{whole}.{frac}" if frac else whole)
    for span in spans:
        raw = b'{"v":1,"kind":"batch","bucket":0,"events":[[' + span.encode() + b',"a","b","c","d","e","f","g","h"]]}'
        got = _fold.rows(raw)
        want = float(span)
        if want > contract.MAX_TS or (span.startswith("0") and len(span) > 1 and span[1] != "."):
            assert got is None, span
            continue
        assert got is not None and got[0][0] == want and type(got[0][0]) is float, span


def test_special_characters_at_every_position_fall_back() -> None:
    # the string scan takes 8 bytes at a time: a quote, backslash, control or non-ASCII byte at
    # any offset of a word must still be seen
    for n in range(1, 26):
        for at in range(n):
            for special in ('"', "\\", "\x01", "\x1f", "é", "\x7f"):
                value = "a" * at + special + "b" * (n - at - 1)
                check(orjson.dumps({"v": 1, "kind": "batch", "bucket": 0,
                                    "events": [[1.5, value, "m", "h", "p", "u", "k", "", ""]]}))
