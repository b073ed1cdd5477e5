"""Pure byte-level parsing: link/IP/TCP headers down to the payload, and HTTP request heads.

No scapy packet trees on the hot path: frames are sliced with ``struct`` and the HTTP request
head is split by hand. Every rejection returns a reason string (for the drop counters) instead of
raising, so a malformed packet never escapes as an exception.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

# pcap link types we read
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113

METHODS = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE", b"CONNECT"})
MAX_HEAD = 16 * 1024  # larger request heads are counted as dropped, never half-parsed


@dataclass(frozen=True, slots=True)
class Segment:
    """The TCP payload of one packet with its endpoints."""

    src: str
    dst: str
    sport: int
    dport: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One parsed HTTP request head."""

    method: str
    target: str
    host: str
    range: str
    user_agent: str


def parse_frame(frame: bytes, linktype: int = LINKTYPE_ETHERNET) -> Segment | str:
    """Slice a captured frame down to its TCP segment; a string is the reason it was rejected."""
    try:
        if linktype == LINKTYPE_ETHERNET:
            if len(frame) < 14:
                return "short-ethernet"
            ethertype = struct.unpack_from("!H", frame, 12)[0]
            offset = 14
            # 802.1Q / 802.1ad tags, possibly stacked (QinQ)
            while ethertype in (0x8100, 0x88A8, 0x9100):
                if len(frame) < offset + 4:
                    return "short-vlan"
                ethertype = struct.unpack_from("!H", frame, offset + 2)[0]
                offset += 4
        elif linktype == LINKTYPE_LINUX_SLL:
            if len(frame) < 16:
                return "short-sll"
            ethertype = struct.unpack_from("!H", frame, 14)[0]
            offset = 16
        elif linktype == LINKTYPE_RAW:
            if not frame:
                return "short-ip"
            ethertype = 0x0800 if frame[0] >> 4 == 4 else 0x86DD
            offset = 0
        elif linktype == LINKTYPE_NULL:
            if len(frame) < 4:
                return "short-null"
            family = struct.unpack_from("=I", frame, 0)[0]
            ethertype = 0x0800 if family == 2 else 0x86DD
            offset = 4
        else:
            return "unknown-linktype"
        if ethertype == 0x0800:
            return _ipv4(frame, offset)
        if ethertype == 0x86DD:
            return _ipv6(frame, offset)
        return "not-ip"
    except (struct.error, IndexError, ValueError):
        return "malformed"


def _ipv4(frame: bytes, off: int) -> Segment | str:
    if len(frame) < off + 20:
        return "short-ip"
    vihl = frame[off]
    if vihl >> 4 != 4:
        return "bad-ip-version"
    ihl = (vihl & 0x0F) * 4
    if ihl < 20:
        return "bad-ip-header"
    total = struct.unpack_from("!H", frame, off + 2)[0]
    frag = struct.unpack_from("!H", frame, off + 6)[0]
    if frag & 0x3FFF:  # fragment offset or more-fragments: not reassembled here
        return "ip-fragment"
    if frame[off + 9] != 6:
        return "not-tcp"
    end = off + total if total else len(frame)
    if total < ihl or end > len(frame):
        return "bad-ip-length"
    src = str(ipaddress.IPv4Address(frame[off + 12 : off + 16]))
    dst = str(ipaddress.IPv4Address(frame[off + 16 : off + 20]))
    return _tcp(frame, off + ihl, end, src, dst)


_IPV6_EXT = {0, 43, 60}  # hop-by-hop, routing, destination options (fragments are not followed)


def _ipv6(frame: bytes, off: int) -> Segment | str:
    if len(frame) < off + 40:
        return "short-ip"
    if frame[off] >> 4 != 6:
        return "bad-ip-version"
    plen = struct.unpack_from("!H", frame, off + 4)[0]
    nxt = frame[off + 6]
    src = str(ipaddress.IPv6Address(frame[off + 8 : off + 24]))
    dst = str(ipaddress.IPv6Address(frame[off + 24 : off + 40]))
    end = off + 40 + plen
    if end > len(frame):
        return "bad-ip-length"
    pos = off + 40
    hops = 0
    while nxt in _IPV6_EXT:
        if pos + 8 > end or hops > 8:
            return "bad-ipv6-ext"
        nxt, hdr_len = frame[pos], (frame[pos + 1] + 1) * 8
        pos += hdr_len
        hops += 1
    if nxt == 44:
        return "ip-fragment"
    if nxt != 6:
        return "not-tcp"
    return _tcp(frame, pos, end, src, dst)


def _tcp(frame: bytes, off: int, end: int, src: str, dst: str) -> Segment | str:
    if end < off + 20:
        return "short-tcp"
    sport, dport = struct.unpack_from("!HH", frame, off)
    doff = (frame[off + 12] >> 4) * 4
    if doff < 20 or off + doff > end:
        return "bad-tcp-header"
    return Segment(src, dst, sport, dport, bytes(frame[off + doff : end]))


def parse_requests(payload: bytes) -> tuple[list[HttpRequest], list[str]]:
    """Every complete HTTP request head in one TCP payload (pipelining included).

    Returns the requests and the reasons for anything rejected. A head cut off at the end of
    the payload is reported as ``incomplete-head`` rather than guessed at.
    """
    requests: list[HttpRequest] = []
    rejects: list[str] = []
    pos = 0
    n = len(payload)
    while pos < n:
        end = payload.find(b"\r\n\r\n", pos)
        if end < 0:
            if payload[pos:].strip(b"\r\n"):
                rejects.append("incomplete-head" if _looks_like_request(payload[pos:]) else "not-http")
            break
        if end - pos > MAX_HEAD:
            rejects.append("head-too-large")
            break
        head = payload[pos:end]
        pos = end + 4
        req = _parse_head(head)
        if isinstance(req, str):
            rejects.append(req)
            if req == "not-http":
                break  # a body or binary data: nothing after it can be trusted as a new head
            continue
        requests.append(req[0])
        if req[1]:  # skip a request body so a pipelined request after it is still found
            pos += req[1]
    return requests, rejects


def _looks_like_request(data: bytes) -> bool:
    sp = data.find(b" ", 0, 10)
    return sp > 0 and data[:sp] in METHODS


def _parse_head(head: bytes) -> tuple[HttpRequest, int] | str:
    line_end = head.find(b"\r\n")
    line = head if line_end < 0 else head[:line_end]
    parts = line.split(b" ")
    if len(parts) != 3 or parts[0] not in METHODS:
        return "not-http"
    method, target, version = parts
    if not version.startswith(b"HTTP/1."):
        return "bad-version"
    if not target or any(b < 0x21 or b == 0x7F for b in target):
        return "bad-target"
    host = rng = ua = b""
    body = 0
    if line_end >= 0:
        for hline in head[line_end + 2 :].split(b"\r\n"):
            name, sep, value = hline.partition(b":")
            if not sep:
                return "bad-header"
            lname = name.strip().lower()
            if lname == b"host":
                host = value.strip()
            elif lname == b"range":
                rng = value.strip()
            elif lname == b"user-agent":
                ua = value.strip()
            elif lname == b"content-length":
                try:
                    body = int(value.strip())
                except ValueError:
                    return "bad-content-length"
                if body < 0:
                    return "bad-content-length"
    if not host and not target.startswith((b"http://", b"https://")):
        return "no-host"
    try:
        return (
            HttpRequest(
                method=method.decode("ascii"),
                target=target.decode("ascii"),
                host=host.decode("ascii"),
                range=rng.decode("ascii"),
                user_agent=ua.decode("latin-1"),
            ),
            body,
        )
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
