"""Pure wire-level DNS for the hot path: parse one plain question and build a steered answer
without dnslib objects. Anything unusual (several questions, opcodes, compression in the
question, answers in a query) returns None and takes the full dnslib path instead."""

from __future__ import annotations

import socket
import struct
from typing import NamedTuple

QTYPE_A = 1
QTYPE_AAAA = 28
QTYPE_SOA = 6
QTYPE_OPT = 41
CLASS_IN = 1
FLAG_TC = 0x0200
FLAG_AD = 0x0020
FLAG_CD = 0x0010
# the SOA of a forged answer's empty type (negative-cacheable, RFC 2308): names that exist nowhere
_SOA_NAMES = b"\x02ns\x09heatcache\x07invalid\x00\x0ahostmaster\x09heatcache\x07invalid\x00"


def opt_rr(do: bool) -> bytes:
    """Our EDNS(0) OPT record (RFC 6891): 1232-byte payload, DO echoed (RFC 3225), no options."""
    return b"\x00\x00\x29\x04\xd0\x00\x00" + (b"\x80\x00" if do else b"\x00\x00") + b"\x00\x00"


class Question(NamedTuple):
    qid: int
    rd: int  # recursion desired, echoed
    name: str  # lower-case, no trailing dot
    qtype: int
    qclass: int
    end: int  # offset just past the question section
    edns: bool
    cd: int = 0  # checking disabled, copied to answers (RFC 4035 3.2.2)
    do: bool = False  # DNSSEC OK, echoed in our OPT (RFC 3225)
    bufsize: int = 0  # the client's EDNS UDP payload size (0: no EDNS)

    @property
    def udp_limit(self) -> int:
        """The largest UDP answer this client takes: 512, or its EDNS size (RFC 6891), capped at 4096."""
        return max(512, min(self.bufsize, 4096)) if self.edns else 512


def parse_question(raw: bytes) -> Question | None:
    """The single question of a plain query, or None when the full parser must look at it."""
    n = len(raw)
    if n < 17:
        return None
    flags = (raw[2] << 8) | raw[3]
    if flags & 0xF800:  # QR set or opcode != QUERY
        return None
    if raw[4:10] != b"\x00\x01\x00\x00\x00\x00":  # QDCOUNT 1, ANCOUNT 0, NSCOUNT 0
        return None
    arcount = (raw[10] << 8) | raw[11]
    if arcount > 1:
        return None
    pos = 12
    labels = []
    while True:
        if pos >= n:
            return None
        length = raw[pos]
        if length == 0:
            pos += 1
            break
        if length > 63:  # compression pointer or reserved bits in a question: full path
            return None
        labels.append(raw[pos + 1 : pos + 1 + length])
        pos += 1 + length
    if pos + 4 > n or not labels:
        return None
    try:
        name = b".".join(labels).decode("ascii").lower()
    except UnicodeDecodeError:
        return None
    qtype = (raw[pos] << 8) | raw[pos + 1]
    qclass = (raw[pos + 2] << 8) | raw[pos + 3]
    end = pos + 4
    edns = do = False
    bufsize = 0
    if arcount:
        # the one additional record must be an OPT with the root name: anything else, full path
        if end + 11 > n or raw[end] != 0 or raw[end + 1 : end + 3] != b"\x00\x29":
            return None
        edns = True
        bufsize = (raw[end + 3] << 8) | raw[end + 4]
        do = bool(raw[end + 7] & 0x80)
    return Question((raw[0] << 8) | raw[1], (flags >> 8) & 1, name, qtype, qclass, end, edns,
                    1 if flags & FLAG_CD else 0, do, bufsize)


def steered_answer(raw: bytes, q: Question, v4: bytes, v6: bytes, ttl: int) -> bytes:
    """The authoritative answer for a steered A/AAAA question (address bytes already packed).

    Forged, so never AD; CD copied and DO echoed as dnsmasq does; an OPT exactly when the query
    had one. A name with no address of the asked family answers NOERROR with no records and an
    SOA whose minimum is the TTL (so the empty answer is cached no longer than a steered one)."""
    addr = v4 if q.qtype == QTYPE_A else v6
    flags = 0x8400 | (q.rd << 8) | 0x0080 | (q.cd << 4)  # QR, AA, RD echoed, RA, CD echoed
    ancount, nscount = (1, 0) if addr else (0, 1)
    out = struct.pack("!HHHHHH", q.qid, flags, 1, ancount, nscount, 1 if q.edns else 0) + raw[12 : q.end]
    if addr:
        out += struct.pack("!HHHIH", 0xC00C, q.qtype, CLASS_IN, ttl, len(addr)) + addr
    else:
        rdata = _SOA_NAMES + struct.pack("!IIIII", 1, ttl, ttl, ttl, ttl)
        out += struct.pack("!HHHIH", 0xC00C, QTYPE_SOA, CLASS_IN, ttl, len(rdata)) + rdata
    if q.edns:
        out += opt_rr(q.do)
    return out


def truncated(reply: bytes, raw: bytes, q: Question) -> bytes:
    """``reply`` cut to header and question with TC set, for a client whose UDP limit it exceeds;
    the OPT stays when the query had one (the client learns our size, RFC 6891 7)."""
    flags = ((reply[2] << 8) | reply[3]) | FLAG_TC
    return (raw[:2] + struct.pack("!HHHHH", flags, 1, 0, 0, 1 if q.edns else 0) + raw[12 : q.end]
            + (opt_rr(q.do) if q.edns else b""))


def pack_address(address: str) -> bytes:
    """An IPv4 or IPv6 address in wire form; empty stays empty."""
    if not address:
        return b""
    return socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)
