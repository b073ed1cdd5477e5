"""Pure wire-level DNS for the hot path: parse one plain question and build a steered answer
without dnslib objects. Anything unusual (several questions, opcodes, compression in the
question, answers in a query) returns None and takes the full dnslib path instead."""

from __future__ import annotations

import socket
import struct
from typing import NamedTuple

QTYPE_A = 1
QTYPE_AAAA = 28
CLASS_IN = 1
_OPT_RR = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"  # EDNS(0) OPT, 1232-byte payload, no options


class Question(NamedTuple):
    qid: int
    rd: int  # recursion desired, echoed
    name: str  # lower-case, no trailing dot
    qtype: int
    qclass: int
    end: int  # offset just past the question section
    edns: bool


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
    edns = False
    if arcount:
        # the one additional record must be an OPT with the root name: anything else, full path
        if end + 11 > n or raw[end] != 0 or raw[end + 1 : end + 3] != b"\x00\x29":
            return None
        edns = True
    return Question((raw[0] << 8) | raw[1], (flags >> 8) & 1, name, qtype, qclass, end, edns)


def steered_answer(raw: bytes, q: Question, v4: bytes, v6: bytes, ttl: int) -> bytes:
    """The authoritative answer for a steered A/AAAA question (address bytes already packed).

    A name with no address of the asked family answers NOERROR with no records."""
    addr = v4 if q.qtype == QTYPE_A else v6
    flags = 0x8400 | (q.rd << 8) | 0x0080  # QR, AA, RD echoed, RA
    ancount = 1 if addr else 0
    out = struct.pack("!HHHHHH", q.qid, flags, 1, ancount, 0, 1 if q.edns else 0) + raw[12 : q.end]
    if addr:
        out += struct.pack("!HHHIH", 0xC00C, q.qtype, CLASS_IN, ttl, len(addr)) + addr
    if q.edns:
        out += _OPT_RR
    return out


def pack_address(address: str) -> bytes:
    """An IPv4 or IPv6 address in wire form; empty stays empty."""
    if not address:
        return b""
    return socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)
