"""Bounded IP fragment reassembly for the sniffer (pure: capture time passed in, no I/O).

A request head sent over a path with a small MTU (tunnels, some VPNs, IPv6 with a 1280-byte
path) arrives as IP fragments; only the first carries the TCP header. The fragments of a TCP
datagram are kept here until the datagram is whole, then it is handed back as one raw IP packet
(LINKTYPE_RAW) that goes through the normal path. Bounds: at most ``max_datagrams`` datagrams
and ``max_bytes`` bytes waiting, each for at most ``ttl_s`` of capture time (Linux's ipfrag_time
is 30 s). Overlapping fragments drop the datagram (RFC 5722 for IPv6; for IPv4 an overlap is an
evasion trick or a broken sender, never a request we can trust).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from sniffer.parse import Fragment

MAX_DATAGRAM = 65535


@dataclass(slots=True)
class _Datagram:
    ts: float  # capture time of its first fragment seen
    parts: dict[int, bytes] = field(default_factory=dict)  # offset -> data
    header: bytes = b""  # from the fragment at offset 0
    total: int = -1  # data length, known once the last fragment (more=False) is seen
    size: int = 0  # bytes held


@dataclass(slots=True)
class Fragments:
    """IP fragments of TCP datagrams waiting for the rest, keyed by (version, src, dst, id)."""

    counters: Counter[str]
    max_datagrams: int = 256
    max_bytes: int = 4 * 1024 * 1024
    ttl_s: float = 30.0
    _waiting: dict[tuple[int, bytes, bytes, int], _Datagram] = field(default_factory=dict)
    _bytes: int = 0

    def add(self, frag: Fragment, ts: float) -> bytes | None:
        """The whole datagram (a raw IPv4/IPv6 packet) when ``frag`` completes it, else None
        (waiting, or dropped: every drop is counted by reason)."""
        c = self.counters
        dg = self._waiting.get(frag.key)
        if dg is not None and ts - dg.ts > self.ttl_s:
            self._forget(frag.key)
            c["drop.fragment-timeout"] += 1
            dg = None
        if frag.offset + len(frag.data) > MAX_DATAGRAM or (not frag.data and frag.more):
            c["drop.bad-fragment"] += 1
            return None
        if dg is None:
            if len(self._waiting) >= self.max_datagrams or self._bytes + len(frag.data) > self.max_bytes:
                self.expire(ts)
                if len(self._waiting) >= self.max_datagrams or self._bytes + len(frag.data) > self.max_bytes:
                    c["drop.fragments-full"] += 1
                    return None
            dg = self._waiting[frag.key] = _Datagram(ts)
        elif self._bytes + len(frag.data) > self.max_bytes:
            self._forget(frag.key)
            c["drop.fragments-full"] += 1
            return None
        old = dg.parts.get(frag.offset)
        if old is not None:  # the same fragment twice (a duplicated frame): keep one
            dg.size -= len(old)
            self._bytes -= len(old)
        dg.parts[frag.offset] = frag.data
        dg.size += len(frag.data)
        self._bytes += len(frag.data)
        if frag.offset == 0:
            dg.header = frag.header
        if not frag.more:
            end = frag.offset + len(frag.data)
            if dg.total >= 0 and dg.total != end:
                self._forget(frag.key)
                c["drop.fragment-overlap"] += 1
                return None
            dg.total = end
        c["fragments"] += 1
        if dg.total < 0 or not dg.header:
            return None
        data = bytearray()
        for off in sorted(dg.parts):
            if off != len(data):
                if off < len(data):  # overlapping fragments: nothing in them can be trusted
                    self._forget(frag.key)
                    c["drop.fragment-overlap"] += 1
                return None  # (or a hole still open)
            data += dg.parts[off]
        self._forget(frag.key)
        if len(data) != dg.total:
            c["drop.fragment-overlap"] += 1
            return None
        c["defragmented"] += 1
        h = dg.header
        if h[0] >> 4 == 4:  # IPv4: this header with no fragment bits and the whole length
            ihl = len(h)
            return (h[:2] + (ihl + len(data)).to_bytes(2, "big") + h[4:6] + b"\x00\x00" + h[8:] + data)
        return h[:4] + len(data).to_bytes(2, "big") + h[6:] + data

    def _forget(self, key: tuple[int, bytes, bytes, int]) -> None:
        dg = self._waiting.pop(key)
        self._bytes -= dg.size

    def expire(self, now: float) -> None:
        """Forget datagrams waiting longer than the TTL (capture time); counted as dropped."""
        stale = [k for k, dg in self._waiting.items() if now - dg.ts > self.ttl_s]
        for k in stale:
            self._forget(k)
        self.counters["drop.fragment-timeout"] += len(stale)

    def flush(self) -> None:
        """Datagrams still incomplete at the end of a capture are dropped (and counted)."""
        self.counters["drop.fragment-timeout"] += len(self._waiting)
        self._waiting.clear()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._waiting)
