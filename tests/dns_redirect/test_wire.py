"""Unit tests for the wire-level fast path (dns_redirect/wire.py), against dnslib and dnspython."""

from __future__ import annotations

import random

import dns.message
import dns.rdatatype
from dnslib import DNSRecord

from dns_redirect.wire import QTYPE_A, pack_address, parse_question, steered_answer


def test_parse_matches_dnslib() -> None:
    for name, rdtype, edns in [("CDN.Example.org", "A", False), ("a.b.c.example", "AAAA", True),
                               ("x.example", "MX", False)]:
        wire = dns.message.make_query(name, rdtype, use_edns=0 if edns else None).to_wire()
        q = parse_question(wire)
        ref = DNSRecord.parse(wire)
        assert q is not None
        assert (q.qid, q.name, q.qtype, q.qclass, q.edns) == (ref.header.id, name.lower(), int(ref.q.qtype),
                                                              int(ref.q.qclass), edns)


def test_unusual_queries_take_the_full_path() -> None:
    q = dns.message.make_query("x.example", "A")
    resp = dns.message.make_response(q).to_wire()
    assert parse_question(resp) is None  # QR set
    assert parse_question(b"\x00" * 11) is None
    notify = bytearray(q.to_wire())
    notify[2] |= 0x20  # opcode NOTIFY
    assert parse_question(bytes(notify)) is None
    two = bytearray(q.to_wire())
    two[5] = 2
    assert parse_question(bytes(two)) is None
    pointer = bytearray(q.to_wire())
    pointer[12] = 0xC0
    assert parse_question(bytes(pointer)) is None


def test_steered_answer_is_valid_for_both_parsers() -> None:
    for rdtype, edns in [("A", False), ("A", True), ("AAAA", False)]:
        query = dns.message.make_query("Steered.Example", rdtype, use_edns=0 if edns else None)
        raw = query.to_wire()
        q = parse_question(raw)
        assert q is not None
        out = steered_answer(raw, q, pack_address("192.0.2.10"), b"", 30)
        msg = dns.message.from_wire(out)
        assert msg.id == query.id and msg.question[0].name.to_text() == "Steered.Example."  # 0x20 case kept
        assert msg.flags & 0x8000 and msg.flags & 0x0400  # QR, AA
        if rdtype == "A":
            assert [(r.to_text(), msg.answer[0].ttl) for r in msg.answer[0]] == [("192.0.2.10", 30)]
        else:
            assert msg.answer == []  # no IPv6 address configured: NOERROR, empty
        assert (msg.edns >= 0) == edns
        DNSRecord.parse(out)


def test_random_bytes_never_raise() -> None:
    rng = random.Random(5)
    good = dns.message.make_query("a.example", "A", use_edns=0).to_wire()
    for i in range(20_000):
        if i % 2:
            raw = rng.randbytes(rng.randrange(0, 60))
        else:
            b = bytearray(good)
            b[rng.randrange(len(b))] = rng.randrange(256)
            raw = bytes(b[: rng.randrange(len(b) + 1)])
        q = parse_question(raw)
        if q is not None and q.qtype == QTYPE_A:
            DNSRecord.parse(steered_answer(raw, q, pack_address("192.0.2.1"), b"", 5))
