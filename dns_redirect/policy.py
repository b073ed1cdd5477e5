"""Pure DNS policy: who may ask (campus networks), how fast (per-client token buckets), what is
never steered (overrides), and a response cache for forwarded answers that honours TTLs.

Time is passed in, never read, so every rule is testable without sleeping.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from dnslib import QTYPE, RCODE, DNSHeader, DNSRecord

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ClientAcl:
    """Recursion only for configured client networks; everyone else is REFUSED."""

    def __init__(self, networks: Iterable[str]) -> None:
        self.networks: tuple[IpNetwork, ...] = tuple(ipaddress.ip_network(n, strict=False) for n in networks)
        self._memo: dict[str, bool] = {}

    def allowed(self, address: str) -> bool:
        verdict = self._memo.get(address)
        if verdict is None:
            ip = ipaddress.ip_address(address.split("%")[0])
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            verdict = any(ip in net for net in self.networks)
            if len(self._memo) > 100_000:
                self._memo.clear()
            self._memo[address] = verdict
        return verdict


def lane_networks(acl: ClientAcl) -> list[tuple[bool, bytes, int]]:
    """The ACL in the compiled lane's form: (IPv4?, 16 address bytes, prefix over 128 bits).
    IPv4 networks become ::ffff:a.b.c.d/(96+n); the lane matches them only against IPv4 (and
    IPv4-mapped) clients, and IPv6 networks only against the others, as ``ClientAcl`` does."""
    out = []
    for net in acl.networks:
        if isinstance(net, ipaddress.IPv4Network):
            out.append((True, b"\x00" * 10 + b"\xff\xff" + net.network_address.packed, 96 + net.prefixlen))
        else:
            out.append((False, net.network_address.packed, net.prefixlen))
    return out


class RateLimiter:
    """A token bucket per client address: ``rate`` queries/s sustained, ``burst`` at once."""

    def __init__(self, rate: float, burst: float, max_clients: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, client: str, now: float) -> bool:
        if self.rate <= 0:
            return True
        tokens, last = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        ok = tokens >= 1.0
        if ok:
            tokens -= 1.0
        self._buckets[client] = (tokens, now)
        if len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)  # forget the least recently seen client
        return ok


def never_steer(host: str, overrides: Iterable[str]) -> bool:
    """Operator overrides: these hosts (and their subdomains) always resolve normally."""
    return any(host == o or host.endswith("." + o) for o in overrides)


@dataclass(slots=True)
class _Entry:
    record: DNSRecord
    stored: float
    expires: float
    age: int = -1  # the age (whole seconds) ``wire`` was rendered for
    wire: bytes = b""


class ResponseCache:
    """Forwarded answers by (name, type, class), kept for their smallest TTL (negative answers for
    the SOA minimum), served with TTLs counted down. SERVFAIL and truncated answers are not kept."""

    def __init__(self, max_entries: int = 50_000, max_ttl: int = 86_400, negative_ttl: int = 300) -> None:
        self.max_entries = max_entries
        self.max_ttl = max_ttl
        self.negative_ttl = negative_ttl
        self._entries: OrderedDict[tuple[str, int, int, bool], _Entry] = OrderedDict()

    @staticmethod
    def key(request: DNSRecord) -> tuple[str, int, int, bool] | None:
        """(name, type, class, EDNS?): the same key the wire-level fast path computes."""
        if len(request.questions) != 1:
            return None
        q = request.q
        edns = any(rr.rtype == QTYPE.OPT for rr in request.ar)
        return str(q.qname).lower().rstrip("."), int(q.qtype), int(q.qclass), edns

    def put(self, request: DNSRecord, response: DNSRecord, now: float) -> None:
        key = self.key(request)
        if key is None or response.header.tc:
            return
        rcode = response.header.rcode
        if rcode == RCODE.NOERROR and response.rr:
            ttl = min(rr.ttl for rr in response.rr)
        elif rcode == RCODE.NXDOMAIN or (rcode == RCODE.NOERROR and not response.rr):
            soa = [rr for rr in response.auth if rr.rtype == QTYPE.SOA]
            ttl = min([self.negative_ttl] + [min(rr.ttl, rr.rdata.times[-1]) for rr in soa])
        else:
            return
        ttl = min(ttl, self.max_ttl)
        if ttl <= 0:
            return
        self._entries.pop(key, None)
        self._entries[key] = _Entry(response, now, now + ttl)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def get(self, request: DNSRecord, now: float) -> bytes | None:
        """The cached answer for this request (its id and question, TTLs counted down), or None."""
        key = self.key(request)
        if key is None:
            return None
        raw = bytes(request.pack())
        return self.get_wire(key, raw, self._question_end(raw), now)

    @staticmethod
    def _question_end(raw: bytes) -> int:
        pos = 12
        while raw[pos]:
            pos += 1 + raw[pos]
        return pos + 5

    def rendered_until(self, key: tuple[str, int, int, bool], now: float) -> float:
        """Until when the answer ``get_wire`` just gave for ``key`` stays the same bytes: the next
        whole second of its age (its TTLs count down) or its expiry, whichever comes first."""
        entry = self._entries.get(key)
        if entry is None:
            return now
        return min(entry.expires, entry.stored + int(now - entry.stored) + 1)

    def get_wire(self, key: tuple[str, int, int, bool], raw: bytes, question_end: int, now: float) -> bytes | None:
        """Fast path: splice the query's id and question (0x20 case kept) into the cached answer,
        re-rendered at most once per second of age so TTLs count down."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now >= entry.expires:
            del self._entries[key]
            return None
        age = int(now - entry.stored)
        if age != entry.age:
            entry.wire = self._render(entry.record, age)
            entry.age = age
        wire = entry.wire
        return raw[:2] + wire[2:12] + raw[12:question_end] + wire[question_end:]

    @staticmethod
    def _render(record: DNSRecord, age: int) -> bytes:
        reply = DNSRecord(header=DNSHeader(id=0, bitmap=record.header.bitmap), questions=record.questions)
        for section, target in ((record.rr, reply.rr), (record.auth, reply.auth), (record.ar, reply.ar)):
            for rr in section:
                copy = rr.__class__(rr.rname, rr.rtype, rr.rclass, rr.ttl, rr.rdata)
                if rr.rtype != QTYPE.OPT:
                    copy.ttl = max(0, rr.ttl - age)
                target.append(copy)
        return bytes(reply.pack())

    def __len__(self) -> int:
        return len(self._entries)
