"""Unit tests for the DNS answer choice (dns_redirect/answer.py) and the index (index.py)."""

from __future__ import annotations

from dnslib import QTYPE, RCODE, DNSRecord

from dns_redirect.answer import error_reply, steered_reply
from dns_redirect.index import CacheIndex
from heatcache.contract import CacheEvent


def steered(name: str) -> bool:
    return name == "cdn.example"


def test_steered_a_answer() -> None:
    reply = steered_reply(DNSRecord.question("CDN.example.", "A"), steered, "192.0.2.10", "", 30)
    assert reply is not None
    assert [(str(r.rdata), r.ttl) for r in reply.rr] == [("192.0.2.10", 30)]
    assert reply.header.rcode == RCODE.NOERROR and reply.header.aa == 1


def test_steered_aaaa_without_v6_is_empty_noerror() -> None:
    reply = steered_reply(DNSRecord.question("cdn.example", "AAAA"), steered, "192.0.2.10", "", 30)
    assert reply is not None and reply.rr == [] and reply.header.rcode == RCODE.NOERROR
    reply6 = steered_reply(DNSRecord.question("cdn.example", "AAAA"), steered, "192.0.2.10", "2001:db8::10", 30)
    assert reply6 is not None and str(reply6.rr[0].rdata) == "2001:db8::10"


def test_others_are_forwarded() -> None:
    assert steered_reply(DNSRecord.question("other.example", "A"), steered, "192.0.2.10", "", 30) is None
    assert steered_reply(DNSRecord.question("cdn.example", "MX"), steered, "192.0.2.10", "", 30) is None


def test_error_reply() -> None:
    raw = bytes(DNSRecord.question("x.example", "A").pack())
    reply = DNSRecord.parse(error_reply(raw) or b"")
    assert reply.header.rcode == RCODE.SERVFAIL and reply.q.qtype == QTYPE.A
    assert error_reply(b"\x00garbage") is None


def test_index_follows_states() -> None:
    idx = CacheIndex()
    idx.apply(CacheEvent("http://cdn.example/a", "cached", path="objects/aa/a"))
    idx.apply(CacheEvent("http://cdn.example:8080/b", "cached", path="objects/bb/b"))
    assert idx.is_steered("cdn.example") and idx.is_steered("CDN.example.")
    idx.apply(CacheEvent("http://cdn.example/a", "evicted"))
    assert idx.is_steered("cdn.example") and idx.get("http://cdn.example/a") is None
    idx.remove("http://cdn.example:8080/b")
    assert not idx.is_steered("cdn.example")
    assert idx.recently_steered("cdn.example", 60) and not idx.recently_steered("cdn.example", 0)
    assert not idx.recently_steered("never.example", 60)
    idx.apply(CacheEvent("http://x.example/c", "failed"))
    assert not idx.is_steered("x.example")
