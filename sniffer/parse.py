"""Pure byte-level parsing: link/IP/TCP headers down to the payload, HTTP request heads, and the
server name of a TLS ClientHello.

No scapy packet trees on the hot path: frames are sliced by index and ``int.from_bytes``, request
heads are split with ``bytes.find`` and one regular expression. Every rejection returns a reason
string (for the drop counters) instead of raising, so a malformed packet never escapes as an
exception. scapy's dissectors are the reference these functions are tested against.
"""

from __future__ import annotations

import re
from socket import AF_INET, AF_INET6, inet_ntop
from typing import NamedTuple

# pcap link types we read
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113

METHODS = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE", b"CONNECT"})
MAX_HEAD = 16 * 1024  # larger request heads are counted as dropped, never half-parsed
_VLAN_TYPES = (0x8100, 0x88A8, 0x9100)
_IPV6_EXT = frozenset({0, 43, 60})  # hop-by-hop, routing, destination options (fragments: parse_fragment)
# Header lines we need, found in one pass; a line without a colon makes the head malformed.
_FIELDS = re.compile(rb"\r\n(host|range|user-agent|content-length)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)
_BAD_LINE = re.compile(rb"\r\n[^:\r\n]*(?:\r\n|$)")
_BAD_TARGET = re.compile(rb"[\x00-\x20\x7f]")


class Segment(NamedTuple):
    """The TCP payload of one packet with its endpoints and sequence number."""

    src: str
    dst: str
    sport: int
    dport: int
    payload: bytes
    seq: int = 0
    flags: int = 0  # TCP flags byte (SYN 0x02: the flow's initial sequence number)


class HttpRequest(NamedTuple):
    """One parsed HTTP request head (values as sent, not normalized)."""

    method: str
    target: str
    host: str
    range: str
    user_agent: str


def parse_frame(frame: bytes, linktype: int = LINKTYPE_ETHERNET) -> Segment | str:
    """Slice a captured frame down to its TCP segment; a string is the reason it was rejected."""
    return _parse(frame, linktype, False)  # type: ignore[return-value]  # a Fragment only with fragments=True


def _parse(frame: bytes, linktype: int, fragments: bool) -> Segment | Fragment | str:
    """The one walk of link and IP headers for parse_frame and parse_fragment: ``fragments``
    turns what parse_frame rejects as "ip-fragment" into the Fragment to reassemble."""
    try:
        link = _link(frame, linktype)
        if isinstance(link, str):
            return link
        ethertype, offset = link
        if ethertype == 0x0800:
            return _ipv4(frame, offset, fragments)
        if ethertype == 0x86DD:
            return _ipv6(frame, offset, fragments)
        return "not-ip"
    except (IndexError, ValueError):
        return "malformed"


def _link(frame: bytes, linktype: int) -> tuple[int, int] | str:
    """(ethertype, offset of the IP header) under the link-layer header, or a reason."""
    if linktype == LINKTYPE_ETHERNET:
        if len(frame) < 14:
            return "short-ethernet"
        ethertype = (frame[12] << 8) | frame[13]
        offset = 14
        while ethertype in _VLAN_TYPES:  # 802.1Q / 802.1ad tags, possibly stacked (QinQ)
            if len(frame) < offset + 4:
                return "short-vlan"
            ethertype = (frame[offset + 2] << 8) | frame[offset + 3]
            offset += 4
    elif linktype == LINKTYPE_LINUX_SLL:
        if len(frame) < 16:
            return "short-sll"
        ethertype = (frame[14] << 8) | frame[15]
        offset = 16
    elif linktype == LINKTYPE_RAW:
        if not frame:
            return "short-ip"
        ethertype = 0x0800 if frame[0] >> 4 == 4 else 0x86DD
        offset = 0
    elif linktype == LINKTYPE_NULL:
        if len(frame) < 4:
            return "short-null"
        family = int.from_bytes(frame[:4], "little")
        if family > 0xFFFF:  # written by a big-endian host
            family = int.from_bytes(frame[:4], "big")
        ethertype = 0x0800 if family == 2 else 0x86DD
        offset = 4
    else:
        return "unknown-linktype"
    return ethertype, offset


class Fragment(NamedTuple):
    """One IP fragment of a TCP datagram: enough to reassemble it (sniffer.reassembly)."""

    key: tuple[int, bytes, bytes, int]  # (IP version, source, destination, identification)
    offset: int  # of its data in the datagram, in bytes
    more: bool  # more fragments follow
    header: bytes  # the header a reassembled datagram gets (IPv4: this one's; IPv6: the fixed 40 bytes)
    data: bytes


def parse_fragment(frame: bytes, linktype: int = LINKTYPE_ETHERNET) -> Fragment | str:
    """The fragment in a frame parse_frame rejected as "ip-fragment"; a reason if it is not one
    of a TCP datagram (only those are reassembled: UDP fragments are never requests)."""
    res = _parse(frame, linktype, True)
    return res if isinstance(res, (Fragment, str)) else "ip-fragment"  # not a fragment: never asked


def _ipv4(frame: bytes, off: int, fragments: bool = False) -> Segment | Fragment | str:
    if len(frame) < off + 20:
        return "short-ip"
    vihl = frame[off]
    if vihl >> 4 != 4:
        return "bad-ip-version"
    ihl = (vihl & 0x0F) * 4
    if ihl < 20:
        return "bad-ip-header"
    total = (frame[off + 2] << 8) | frame[off + 3]
    fo = (frame[off + 6] << 8) | frame[off + 7]
    if fo & 0x3FFF:  # offset or more-fragments: reassembled first (sniffer.reassembly)
        if not fragments:
            return "ip-fragment"
        end = off + total
        if frame[off + 9] != 6:
            return "ip-fragment"
        if total < ihl or end > len(frame):
            return "bad-ip-length"
        key = (4, frame[off + 12 : off + 16], frame[off + 16 : off + 20], frame[off + 4] << 8 | frame[off + 5])
        return Fragment(key, (fo & 0x1FFF) * 8, bool(fo & 0x2000), frame[off : off + ihl], frame[off + ihl : end])
    if frame[off + 9] != 6:
        return "not-tcp"
    end = off + total if total else len(frame)  # total 0: TSO-sized capture
    if (total and total < ihl) or end > len(frame):
        return "bad-ip-length"
    return _tcp(frame, off + ihl, end, inet_ntop(AF_INET, frame[off + 12 : off + 16]),
                inet_ntop(AF_INET, frame[off + 16 : off + 20]))


def _ipv6(frame: bytes, off: int, fragments: bool = False) -> Segment | Fragment | str:
    if len(frame) < off + 40:
        return "short-ip"
    if frame[off] >> 4 != 6:
        return "bad-ip-version"
    end = off + 40 + ((frame[off + 4] << 8) | frame[off + 5])
    if end > len(frame):
        return "bad-ip-length"
    nxt = frame[off + 6]
    pos = off + 40
    hops = 0
    while nxt in _IPV6_EXT:
        if pos + 8 > end or hops > 8:
            return "bad-ipv6-ext"
        nxt, pos = frame[pos], pos + (frame[pos + 1] + 1) * 8
        hops += 1
    if nxt == 44:
        if not fragments:
            return "ip-fragment"
        if pos + 8 > end:
            return "bad-ipv6-ext"
        if frame[pos] != 6:
            return "ip-fragment"
        fo = (frame[pos + 2] << 8) | frame[pos + 3]
        # the reassembled datagram: the fixed header, next header TCP, no extension headers
        header = frame[off : off + 6] + b"\x06" + frame[off + 7 : off + 40]
        ident = int.from_bytes(frame[pos + 4 : pos + 8], "big")
        key = (6, frame[off + 8 : off + 24], frame[off + 24 : off + 40], ident)
        return Fragment(key, fo & 0xFFF8, bool(fo & 1), header, frame[pos + 8 : end])
    if nxt != 6:
        return "not-tcp"
    return _tcp(frame, pos, end, inet_ntop(AF_INET6, frame[off + 8 : off + 24]),
                inet_ntop(AF_INET6, frame[off + 24 : off + 40]))


def _tcp(frame: bytes, off: int, end: int, src: str, dst: str) -> Segment | str:
    if end < off + 20:
        return "short-tcp"
    doff = (frame[off + 12] >> 4) * 4
    if doff < 20 or off + doff > end:
        return "bad-tcp-header"
    return Segment(src, dst, (frame[off] << 8) | frame[off + 1], (frame[off + 2] << 8) | frame[off + 3],
                   frame[off + doff : end], int.from_bytes(frame[off + 4 : off + 8], "big"), frame[off + 13])


def parse_requests(payload: bytes) -> tuple[list[HttpRequest], list[str], bytes]:
    """Every complete HTTP request head in one TCP payload (pipelining included).

    Returns the requests, the reasons for anything rejected, and the start of a request head cut
    off at the end of the payload (empty if none): the caller may prepend it to the flow's next
    segment, or count it as dropped. It is never guessed at.
    """
    requests: list[HttpRequest] = []
    rejects: list[str] = []
    pos = 0
    n = len(payload)
    while pos < n:
        end = payload.find(b"\r\n\r\n", pos)
        if end < 0:
            rest = payload[pos:]
            if _looks_like_request(rest):
                if len(rest) > MAX_HEAD:
                    rejects.append("head-too-large")
                    return requests, rejects, b""
                return requests, rejects, rest
            if rest.strip(b"\r\n"):
                rejects.append("not-http")
            break
        if end - pos > MAX_HEAD:
            rejects.append("head-too-large")
            break
        req = _parse_head(payload[pos:end])
        pos = end + 4
        if isinstance(req, str):
            rejects.append(req)
            if req == "not-http":
                break  # a body or binary data: nothing after it can be trusted as a new head
            continue
        requests.append(req[0])
        pos += req[1]  # skip a request body so a pipelined request after it is still found
    return requests, rejects, b""


def _looks_like_request(data: bytes) -> bool:
    sp = data.find(b" ", 0, 8)
    if sp < 0:
        # a head cut inside its method ("GE"): a prefix of a method and nothing else
        return 0 < len(data) < 8 and any(m.startswith(data) for m in METHODS)
    return data[:sp] in METHODS


def _parse_head(head: bytes) -> tuple[HttpRequest, int] | str:
    line_end = head.find(b"\r\n")
    line = head if line_end < 0 else head[:line_end]
    parts = line.split(b" ")
    if len(parts) != 3 or parts[0] not in METHODS:
        return "not-http"
    method, target, version = parts
    if not version.startswith(b"HTTP/1."):
        return "bad-version"
    if not target or _BAD_TARGET.search(target):
        return "bad-target"
    host = rng = ua = b""
    body = 0
    if line_end >= 0:
        rest = head[line_end:]
        if _BAD_LINE.search(rest):
            return "bad-header"
        for name, value in _FIELDS.findall(rest):
            lname = name.lower()
            if lname == b"host":
                host = value.rstrip(b" \t")
            elif lname == b"range":
                rng = value.rstrip(b" \t")
            elif lname == b"user-agent":
                ua = value.rstrip(b" \t")
            else:
                v = value.strip()
                if not v.isdigit():
                    return "bad-content-length"
                body = int(v)
    # HTTP/1.0 may omit Host: the host is then the destination address (the caller fills it in,
    # as tshark and proxies do); HTTP/1.1 requires it (RFC 9112 3.2)
    if not host and version != b"HTTP/1.0" and not target.startswith((b"http://", b"https://")):
        return "no-host"
    try:
        return HttpRequest(method.decode("ascii"), target.decode("ascii"), host.decode("ascii"),
                           rng.decode("ascii"), ua.decode("latin-1")), body
    except UnicodeDecodeError:
        return "non-ascii"


def ua_class(user_agent: str) -> str:
    """A coarse user-agent class: enough to tell updaters from browsers, no fingerprinting."""
    ua = user_agent.lower()
    if not ua:
        return ""
    for needle, cls in (
        ("windows-update", "updater"), ("microsoft-delivery", "updater"), ("apt-http", "updater"),
        ("steam", "game"), ("aria2", "downloader"), ("wget", "downloader"), ("curl", "downloader"),
        ("mozilla", "browser"),
    ):
        if needle in ua:
            return cls
    return "other"
