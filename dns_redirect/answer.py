"""Pure DNS answer choice on dnslib objects (the general path, for queries the wire-level
parser leaves alone): a steered name gets the cache node; anything else is forwarded. Built like
``wire.steered_answer``: never AD, CD copied, DO echoed, an OPT exactly when the query had one."""

from __future__ import annotations

from collections.abc import Callable

from dnslib import AAAA, EDNS0, QTYPE, RCODE, RR, SOA, A, DNSHeader, DNSRecord

SOA_MNAME, SOA_RNAME = "ns.heatcache.invalid.", "hostmaster.heatcache.invalid."


def _opt(request: DNSRecord) -> RR | None:
    """Our OPT for the reply to ``request``, or None when it had none."""
    for rr in request.ar:
        if rr.rtype == QTYPE.OPT:
            do = bool(rr.ttl & 0x8000)
            return EDNS0(udp_len=1232, flags="do" if do else "")
    return None


def _reply(request: DNSRecord, aa: bool, rcode: int = RCODE.NOERROR) -> DNSRecord:
    h = request.header
    header = DNSHeader(id=h.id, qr=1, opcode=h.opcode, aa=1 if aa else 0, rd=h.rd, ra=1, cd=h.cd, ad=0,
                       rcode=rcode)
    reply = DNSRecord(header=header, questions=list(request.questions))
    opt = _opt(request)
    if opt is not None:
        reply.add_ar(opt)
    return reply


def steered_reply(request: DNSRecord, is_steered: Callable[[str], bool], node_v4: str, node_v6: str,
                  ttl: int) -> DNSRecord | None:
    """The reply for a steered A/AAAA question, or None when the query must be forwarded."""
    if request.header.opcode != 0 or len(request.questions) != 1:
        return None
    q = request.q
    qname = str(q.qname).rstrip(".").lower()
    if q.qtype not in (QTYPE.A, QTYPE.AAAA) or q.qclass != 1 or not is_steered(qname):
        return None
    reply = _reply(request, aa=True)
    if q.qtype == QTYPE.A and node_v4:
        reply.add_answer(RR(q.qname, QTYPE.A, ttl=ttl, rdata=A(node_v4)))
    elif q.qtype == QTYPE.AAAA and node_v6:
        reply.add_answer(RR(q.qname, QTYPE.AAAA, ttl=ttl, rdata=AAAA(node_v6)))
    else:
        # A steered name with no address of that family answers NOERROR/empty with an SOA (a
        # negative answer resolvers cache for the TTL): dual-stack clients fall back to the
        # other family, which reaches the cache node, instead of the origin.
        reply.add_auth(RR(q.qname, QTYPE.SOA, ttl=ttl,
                          rdata=SOA(SOA_MNAME, SOA_RNAME, (1, ttl, ttl, ttl, ttl))))
    return reply


def error_reply(raw: bytes, rcode: int = RCODE.SERVFAIL) -> bytes | None:
    """A minimal error answer (no AA, no AD; OPT kept) for a packet we could parse, else None."""
    try:
        request = DNSRecord.parse(raw)
    except Exception:  # dnslib raises several types on garbage; a bad packet is dropped
        return None
    return bytes(_reply(request, aa=False, rcode=rcode).pack())
