"""Pure DNS answer choice: a steered name gets the cache node; anything else is forwarded."""

from __future__ import annotations

from collections.abc import Callable

from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSRecord


def steered_reply(request: DNSRecord, is_steered: Callable[[str], bool], node_v4: str, node_v6: str,
                  ttl: int) -> DNSRecord | None:
    """The reply for a steered A/AAAA question, or None when the query must be forwarded."""
    if request.header.opcode != 0 or len(request.questions) != 1:
        return None
    q = request.q
    qname = str(q.qname).rstrip(".").lower()
    if q.qtype not in (QTYPE.A, QTYPE.AAAA) or not is_steered(qname):
        return None
    reply = request.reply()
    reply.header.ra = 1
    if q.qtype == QTYPE.A and node_v4:
        reply.add_answer(RR(q.qname, QTYPE.A, ttl=ttl, rdata=A(node_v4)))
    elif q.qtype == QTYPE.AAAA and node_v6:
        reply.add_answer(RR(q.qname, QTYPE.AAAA, ttl=ttl, rdata=AAAA(node_v6)))
    # A steered name with no address of that family answers NOERROR/empty: the client falls
    # back to the other family, which reaches the cache node, instead of the origin.
    return reply


def error_reply(raw: bytes, rcode: int = RCODE.SERVFAIL) -> bytes | None:
    """A minimal error answer for a packet we could parse the header of, else None (drop)."""
    try:
        request = DNSRecord.parse(raw)
    except Exception:  # dnslib raises several types on garbage; a bad packet is dropped
        return None
    reply = request.reply()
    reply.header.rcode = rcode
    return bytes(reply.pack())
