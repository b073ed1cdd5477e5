"""Pure mapping from captured frames to RequestEvents: filters, client pseudonyms, cache keys,
bounded reassembly of request heads split across segments, and TLS server names.

Two interchangeable paths: the pure-Python reference (sniffer/parse.py underneath) and the
compiled fast path (sniffer/_fastpath.c does link/IP/TCP and HTTP heads in one call per frame),
the default when the extension imports. They give the same events and the same counters;
tests/sniffer/test_fastpath.py holds them to that.

Everything here is deterministic given its inputs (frames and capture times); the only state is
bounded: memo tables (cache keys, client ids), the next expected sequence number of at most
``max_flows`` client->server flows (a retransmitted request is counted once), out-of-order
segments and partial heads of at most ``max_partial`` flows, and IP fragments waiting for the
rest of their datagram (sniffer.reassembly); all expired on capture time.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from socket import AF_INET, AF_INET6, inet_pton

from heatcache.cachekey import BadUrl, KeyRules, _filter_query, cache_key, split_host
from heatcache.contract import RequestEvent
from heatcache.networks import PSEUDONYM_LEN, NetworkNamer, label_client, labelled_networks
from heatcache.settings import Settings
from heatcache.tls import parse_sni
from sniffer.parse import (
    LINKTYPE_ETHERNET,
    LINKTYPE_RAW,
    MAX_HEAD,
    parse_fragment,
    parse_frame,
    parse_requests,
    ua_class,
)
from sniffer.reassembly import Fragments

try:
    from sniffer import _fastpath
except ImportError:  # not built (no compiler): the reference still works; tests import it directly
    _fastpath = None  # type: ignore[assignment]

KEEP_METHODS = frozenset({"GET", "HEAD"})
Frame = tuple[bytes, float, int]  # (frame bytes, capture time, linktype), as sniffer.capture yields them
TLS_METHOD = "TLS"  # host-level events from a ClientHello: no path, never fetched
_MEMO_MAX = 65_536
_new_tuple = tuple.__new__  # RequestEvent without its Python-level __new__: same tuple, fewer calls
SYN = 0x02
SEQ_WINDOW = 1 << 24  # further from the expected sequence number: a new stream on the same ports
_M32 = 0xFFFFFFFF


def flow_key(src: str, sport: int, dst: str, dport: int) -> bytes:
    """The key of a client->server flow in the sequence table: both addresses as packed bytes,
    then both ports (what the C path builds straight from the frame)."""
    fam = AF_INET6 if ":" in src else AF_INET
    return inet_pton(fam, src) + inet_pton(fam, dst) + ((sport << 16) | dport).to_bytes(4, "big")


def _signed(d: int) -> int:
    """A 32-bit sequence-number difference as a signed distance."""
    return ((d + 0x80000000) & _M32) - 0x80000000


def dest_host(dst: str, dport: int) -> str:
    """The Host of an HTTP/1.0 request that sent none: its destination address, as tshark and
    proxies take it (IPv6 in brackets, the port unless 80)."""
    host = f"[{dst}]" if ":" in dst else dst
    return host if dport == 80 else f"{host}:{dport}"


def compiled_available() -> bool:
    """Whether the compiled fast path (sniffer._fastpath) was built and imports."""
    return _fastpath is not None


@dataclass(slots=True)
class ClientHasher:
    """Pseudonymous client ids: HMAC-SHA256 of the address under a key rotated every period.

    Ids are stable within a period and unlinkable across periods and secrets. ``raw=True``
    publishes addresses as they are (only when an operator explicitly configures it).
    ``networks``: a client in a named network gets that name in front of its id
    ("dorms/3f2a...", heatcache.networks.label_client), so consumers can count per network
    without addresses.
    """

    secret: bytes
    rotation_s: int
    raw: bool = False
    networks: NetworkNamer | None = None
    _epoch: int = -1
    _key: bytes = b""
    _memo: dict[str, str] = field(default_factory=dict)

    def client_id(self, address: str, ts: float) -> str:
        if self.raw:
            return address
        epoch = int(ts // self.rotation_s)
        if epoch != self._epoch:
            self._epoch = epoch
            self._key = hmac.new(self.secret, epoch.to_bytes(8, "big", signed=True), hashlib.sha256).digest()
            self._memo = {}
        cid = self._memo.get(address)
        if cid is None:
            if len(self._memo) >= _MEMO_MAX:
                self._memo.clear()
            # hmac.digest: the one-shot C HMAC, same bytes as hmac.new(...).hexdigest() at a fraction of the cost
            cid = hmac.digest(self._key, address.encode(), "sha256").hex()[:PSEUDONYM_LEN]
            if self.networks:
                cid = label_client(self.networks.name(address), cid)
            self._memo[address] = cid
        return cid

    @classmethod
    def from_settings(cls, settings: Settings) -> ClientHasher:
        """The sniffer's hasher: HEATCACHE_CLIENT_ID_SECRET/_ROTATION_S/_RAW, and network labels
        from HEATCACHE_CONSOLE_NETWORKS when HEATCACHE_CLIENT_ID_NETWORK (the default)."""
        labels = labelled_networks(settings.console_networks) if settings.client_id_network else ()
        return cls(settings.client_id_secret.get_secret_value().encode(), settings.client_id_rotation_s,
                   raw=settings.client_id_raw, networks=NetworkNamer(labels) if labels else None)


@dataclass(frozen=True, slots=True)
class Filters:
    """What the sniffer never publishes."""

    ignore_addresses: frozenset[str] = frozenset()  # e.g. the cache node: no feedback loop
    ignore_hosts: tuple[str, ...] = ()  # a host and its subdomains
    ignore_paths: tuple[str, ...] = ()  # path prefixes

    def host_ignored(self, host: str) -> bool:
        return any(host == h or host.endswith("." + h) for h in self.ignore_hosts)

    def path_ignored(self, path: str) -> bool:
        return path.startswith(self.ignore_paths) if self.ignore_paths else False


@dataclass(slots=True)
class _Partial:
    next_seq: int
    data: bytes
    ts: float


@dataclass(slots=True)
class FrameParser:
    """Turns captured frames into RequestEvents and counts every drop by reason."""

    ports: frozenset[int]
    rules: KeyRules
    hasher: ClientHasher
    ignore: frozenset[str] = frozenset()
    counters: Counter[str] = field(default_factory=Counter)
    tls_ports: frozenset[int] = frozenset()
    filters: Filters | None = None
    max_partial: int = 1024  # flows with a head cut across segments (or out-of-order segments), waiting
    partial_ttl_s: float = 5.0  # also how long an out-of-order segment waits for the gap before it
    max_flows: int = 65_536  # client->server flows whose next sequence number is remembered
    flow_ttl_s: float = 120.0  # an idle flow is forgotten after this (its next segment starts it over)
    max_out_of_order: int = 64 * 1024  # bytes of out-of-order segments held per flow
    fragments: Fragments | None = None  # IP fragments of TCP datagrams (built in __post_init__)
    _next: dict[bytes, tuple[int, float]] = field(default_factory=dict)  # flow -> (next seq, last seen)
    _ooo: dict[bytes, list[tuple[int, bytes, float]]] = field(default_factory=dict)  # flow -> (seq, data, ts)
    _keys: dict[tuple[str, str], str | None] = field(default_factory=dict)
    _uas: dict[str, str] = field(default_factory=dict)
    _partials: dict[tuple[str, int, str, int], _Partial] = field(default_factory=dict)
    _rules_on: bool = False
    compiled: bool | None = None  # None: the compiled fast path when it imports, else the reference
    _portmap: bytes = b""
    _entries: dict[tuple[str, str], tuple[str, str, str, str] | str] = field(default_factory=dict)
    _bases: dict[tuple[str, str], tuple[str, str] | None] = field(default_factory=dict)
    _params: dict[tuple[str, str], bool] = field(default_factory=dict)
    _fast_events: Callable[[bytes, float, int], list[RequestEvent] | None] | None = None
    _fast_many: Callable[[list[Frame], Callable[..., list[RequestEvent]]], list[RequestEvent]] | None = None
    _fast_pcap: Callable[..., tuple[list[RequestEvent], int, int, float | None]] | None = None

    def __post_init__(self) -> None:
        if self.filters is None:
            self.filters = Filters(ignore_addresses=self.ignore)
        self._rules_on = bool(self.filters.ignore_hosts or self.filters.ignore_paths)
        if self.fragments is None:
            self.fragments = Fragments(self.counters)
        if self.compiled is None:
            self.compiled = _fastpath is not None
        if self.compiled:
            if _fastpath is None:
                raise ImportError("sniffer._fastpath is not built (./dev builds it; needs gcc and Python headers)")
            # destination port -> 0 other, 1 HTTP, 2 TLS (HTTP wins, as in events())
            portmap = bytearray(65536)
            for port in self.tls_ports:
                portmap[port] = 2
            for port in self.ports:
                portmap[port] = 1
            self._portmap = bytes(portmap)
            # frames decided by memo hits alone never leave C; None sends one to _events_compiled
            fast = _fastpath.FastPath(
                portmap=self._portmap, counters=self.counters, entries=self._entries, uas=self._uas,
                partials=self._partials, hasher=self.hasher, rotation_s=float(self.hasher.rotation_s),
                raw=self.hasher.raw, ignored=self.filters.ignore_addresses, event_type=RequestEvent,
                params=self._params, rules_on=self._rules_on, ua_class=ua_class, hold=self._hold,
                partial_ttl_s=float(self.partial_ttl_s), flows=self._next, ooo=self._ooo,
                max_flows=self.max_flows, flow_ttl_s=float(self.flow_ttl_s),
            )
            self._fast_events, self._fast_many, self._fast_pcap = fast.events, fast.events_many, fast.pcap_events

    def events(self, frame: bytes, ts: float, linktype: int = LINKTYPE_ETHERNET) -> list[RequestEvent]:
        """The events in one captured frame (none if dropped: every drop is counted by reason)."""
        if self.compiled:
            out = self._fast_events(frame, ts, linktype)  # type: ignore[misc]
            return out if out is not None else self._events_compiled(frame, ts, linktype)
        self.counters["packets"] += 1
        return self._frame(frame, ts, linktype)

    def _frame(self, frame: bytes, ts: float, linktype: int) -> list[RequestEvent]:
        counters = self.counters
        seg = parse_frame(frame, linktype)
        if isinstance(seg, str):
            if seg == "ip-fragment":
                return self._fragment(frame, ts, linktype, self._frame)
            counters["drop." + seg] += 1
            return []
        ignored = self.filters.ignore_addresses  # type: ignore[union-attr]
        if ignored and (seg.src in ignored or seg.dst in ignored):
            counters["drop.ignored-address"] += 1
            return []
        if seg.dport in self.ports:
            payload = seg.payload
            if not payload:
                if seg.flags & SYN:
                    self._syn(flow_key(seg.src, seg.sport, seg.dst, seg.dport), seg.seq, ts)
                counters["drop.no-payload"] += 1
                return []
            segs = self._order(flow_key(seg.src, seg.sport, seg.dst, seg.dport), seg.seq, payload, ts, seg.flags)
            if segs is None:
                return self._http(seg.src, seg.sport, seg.dst, seg.dport, seg.seq, payload, ts)
            out = []
            for seq, data in segs:
                out += self._http(seg.src, seg.sport, seg.dst, seg.dport, seq, data, ts)
            return out
        if seg.dport in self.tls_ports:
            return self._tls(seg.src, seg.payload, ts)
        counters["drop.other-port"] += 1
        return []

    def events_many(self, records: list[Frame]) -> list[RequestEvent]:
        """The events of a batch of (frame, ts, linktype) records, in order: events() on each,
        in one C call on the compiled path (frames it cannot decide come back to Python)."""
        if self.compiled:
            return self._fast_many(records, self._events_compiled)  # type: ignore[misc]
        out: list[RequestEvent] = []
        for frame, ts, linktype in records:
            out += self.events(frame, ts, linktype)
        return out

    def events_from_pcap(self, buf: object, offset: int, big_endian: bool, linktype: int,
                         limit: int) -> tuple[list[RequestEvent], int, int, float | None]:
        """Compiled path only: the events of up to ``limit`` classic-pcap records in ``buf`` (a
        whole file's bytes, records from ``offset``), as events() on each frame would give them.
        Returns (events, next offset, records read, capture time of the last one)."""
        if not self.compiled:
            raise RuntimeError("events_from_pcap needs the compiled fast path")
        return self._fast_pcap(buf, offset, big_endian, linktype, limit, self._events_compiled)  # type: ignore[misc]

    def _events_compiled(self, frame: bytes, ts: float, linktype: int = LINKTYPE_ETHERNET) -> list[RequestEvent]:
        """events() with the per-frame work in C; what C leaves open (a held partial head for
        this flow, TLS, an ignored address) is decided here exactly as in the reference."""
        self.counters["packets"] += 1
        return self._compiled_frame(frame, ts, linktype)

    def _compiled_frame(self, frame: bytes, ts: float, linktype: int) -> list[RequestEvent]:
        counters = self.counters
        ignored = self.filters.ignore_addresses  # type: ignore[union-attr]
        res = _fastpath.scan(frame, linktype, self._portmap, bool(ignored))
        if isinstance(res, str):  # a final drop reason, already "drop.<reason>"
            if res == "drop.ip-fragment":
                return self._fragment(frame, ts, linktype, self._compiled_frame)
            counters[res] += 1
            return []
        src, dst, sport, dport, seq, payload, kind, parsed, flags = res
        if ignored:
            if src in ignored or dst in ignored:
                counters["drop.ignored-address"] += 1
                return []
            if kind == 0:
                counters["drop.other-port"] += 1
                return []
        if kind == 2:
            return self._tls(src, payload, ts)
        if not payload:  # an HTTP port: scan() only returns these for a SYN or with ignored addresses
            if flags & SYN:
                self._syn(flow_key(src, sport, dst, dport), seq, ts)
            counters["drop.no-payload"] += 1
            return []
        segs = self._order(flow_key(src, sport, dst, dport), seq, payload, ts, flags)
        if segs is None:  # next in order, as it came: scan() already parsed it
            return self._compiled_segment(src, sport, dst, dport, seq, payload, ts, parsed)
        out: list[RequestEvent] = []
        for s, data in segs:
            out += self._compiled_segment(src, sport, dst, dport, s, data, ts, None)
        return out

    def _compiled_segment(self, src: str, sport: int, dst: str, dport: int, seq: int, payload: bytes, ts: float,
                          parsed: tuple[list[tuple[str, str, str, str, str]], list[str], bytes] | None,
                          ) -> list[RequestEvent]:
        counters = self.counters
        if self._partials:
            part = self._partials.pop((src, sport, dst, dport), None)
            if part is not None:
                if part.next_seq == seq and ts - part.ts <= self.partial_ttl_s:
                    requests, rejects, rest = _fastpath.parse_requests(part.data + payload)
                    counters["reassembled"] += 1
                    for reason in rejects:
                        counters["drop." + reason] += 1
                    if rest:
                        self._hold((src, sport, dst, dport), (seq + len(payload)) & 0xFFFFFFFF, rest, ts)
                    return self._emit(requests, src, ts, dst, dport)
                counters["drop.reassembly-gap"] += 1
        if parsed is None:
            requests, rejects, rest = _fastpath.parse_requests(payload)
            rejects = ["drop." + r for r in rejects]
        else:
            requests, rejects, rest = parsed
        for reason in rejects:  # already "drop.<reason>"
            counters[reason] += 1
        if rest:
            self._hold((src, sport, dst, dport), (seq + len(payload)) & 0xFFFFFFFF, rest, ts)
        return self._emit(requests, src, ts, dst, dport)

    def _emit(self, requests: list[tuple[str, str, str, str, str]], src: str, ts: float, dst: str = "",
              dport: int = 80) -> list[RequestEvent]:
        """Requests -> events for the compiled path: one memo entry per (host, target) holds the
        key, authority, path and URL (or the drop reason), so a repeated URL costs two lookups."""
        counters = self.counters
        out: list[RequestEvent] = []
        entries, uas = self._entries, self._uas
        cid = ""
        for method, target, host, rng, user_agent in requests:
            if method not in KEEP_METHODS:
                counters["drop.method"] += 1
                continue
            if not host:  # HTTP/1.0 without Host
                host = dest_host(dst, dport)
            entry = entries.get((host, target))
            if entry is None:
                entry = self._entry(host, target)
            if isinstance(entry, str):
                counters[entry] += 1
                continue
            key, authority, path, url = entry
            ua = uas.get(user_agent)
            if ua is None:
                if len(uas) >= _MEMO_MAX:
                    uas.clear()
                ua = uas[user_agent] = ua_class(user_agent)
            if not cid:
                cid = self.hasher.client_id(src, ts)
            out.append(_new_tuple(RequestEvent, (ts, cid, method, authority, path, url, key, rng, ua)))
        counters["requests"] += len(out)
        return out

    def _entry(self, host: str, target: str) -> tuple[str, str, str, str] | str:
        """The memo entry for one (host, target), as the reference's _http computes it.

        Most misses are a known path with a new query (tokens, session ids): the key of the
        path is memoized per (host, path) and the keep/drop decision per (host, parameter name),
        which is all _filter_query looks at, so a miss costs a split and a few lookups instead
        of a whole cache_key. Targets here come from the C head parser: origin- or absolute-form,
        never with control characters or spaces.
        """
        q = target.find("?")
        if q > 0 and target[0] == "/" and "#" not in target:
            base = self._bases.get((host, target[:q]))
            if base is None:
                base = self._base(host, target[:q])
            if base is None:
                entry: tuple[str, str, str, str] | str = "drop.bad-url"
            else:
                kept = self._kept_query(target[q + 1 :], base[1])
                key = f"{base[0]}?{kept}" if kept else base[0]
                entry = self._entry_of(key, target)
        else:
            try:
                entry = self._entry_of(cache_key(host, target, self.rules), target)
            except BadUrl:
                entry = "drop.bad-url"
        if len(self._entries) >= _MEMO_MAX:
            self._entries.clear()
        self._entries[(host, target)] = entry
        return entry

    def _base(self, host: str, path: str) -> tuple[str, str] | None:
        """(cache key of the path without query, the host _filter_query sees), None if BadUrl."""
        try:
            base: tuple[str, str] | None = (cache_key(host, path, self.rules), split_host(host)[0])
        except BadUrl:
            base = None
        if len(self._bases) >= _MEMO_MAX:
            self._bases.clear()
        self._bases[(host, path)] = base
        return base

    def _kept_query(self, query: str, host: str) -> str:
        """_filter_query(query, host, rules), one memoized decision per parameter name."""
        params = self._params
        out = []
        for part in query.split("&"):
            if not part:
                continue
            name = part.partition("=")[0]
            keep = params.get((host, name))
            if keep is None:
                if len(params) >= _MEMO_MAX:
                    params.clear()
                keep = params[(host, name)] = _filter_query(part, host, self.rules) == part
            if keep:
                out.append(part)
        return "&".join(out)

    def _entry_of(self, key: str, target: str) -> tuple[str, str, str, str] | str:
        authority = key[7 : key.find("/", 7)] if key.startswith("http://") else key.split("/")[2]
        path = target if target[0] == "/" else "/" + target.partition("://")[2].partition("/")[2]
        if self._rules_on and (self.filters.host_ignored(authority.partition(":")[0])  # type: ignore[union-attr]
                               or self.filters.path_ignored(path)):  # type: ignore[union-attr]
            return "drop.ignored-rule"
        return key, authority, path, f"http://{authority}{path}"

    def _http(self, src: str, sport: int, dst: str, dport: int, seq: int, payload: bytes,
              ts: float) -> list[RequestEvent]:
        counters = self.counters
        next_seq = (seq + len(payload)) & 0xFFFFFFFF
        if self._partials:
            part = self._partials.pop((src, sport, dst, dport), None)
            if part is not None:
                if part.next_seq == seq and ts - part.ts <= self.partial_ttl_s:
                    payload = part.data + payload
                    counters["reassembled"] += 1
                else:
                    counters["drop.reassembly-gap"] += 1
        requests, rejects, rest = parse_requests(payload)
        for reason in rejects:
            counters["drop." + reason] += 1
        if rest:
            self._hold((src, sport, dst, dport), next_seq, rest, ts)
        out = []
        keys, uas, client_id = self._keys, self._uas, self.hasher.client_id
        for req in requests:
            if req.method not in KEEP_METHODS:
                counters["drop.method"] += 1
                continue
            host = req.host or dest_host(dst, dport)  # HTTP/1.0 without Host: the destination
            memo_key = (host, req.target)
            key = keys.get(memo_key, "")
            if key == "":
                try:
                    key = cache_key(host, req.target, self.rules)
                except BadUrl:
                    key = None
                if len(keys) >= _MEMO_MAX:
                    keys.clear()
                keys[memo_key] = key
            if key is None:
                counters["drop.bad-url"] += 1
                continue
            authority = key[7 : key.find("/", 7)] if key.startswith("http://") else key.split("/")[2]
            target = req.target
            path = target if target[0] == "/" else "/" + target.partition("://")[2].partition("/")[2]
            if self._rules_on and (self.filters.host_ignored(authority.partition(":")[0])  # type: ignore[union-attr]
                                   or self.filters.path_ignored(path)):  # type: ignore[union-attr]
                counters["drop.ignored-rule"] += 1
                continue
            ua = uas.get(req.user_agent)
            if ua is None:
                if len(uas) >= _MEMO_MAX:
                    uas.clear()
                ua = uas[req.user_agent] = ua_class(req.user_agent)
            out.append(RequestEvent(ts, client_id(src, ts), req.method, authority, path,
                                    f"http://{authority}{path}", key, req.range, ua))
        counters["requests"] += len(out)
        return out

    def _hold(self, flow: tuple[str, int, str, int], next_seq: int, rest: bytes, ts: float) -> None:
        """Keep a cut head for the flow's next segment, within bounds; otherwise count it dropped."""
        if len(rest) > MAX_HEAD:
            self.counters["drop.head-too-large"] += 1
            return
        if len(self._partials) >= self.max_partial:
            self.expire(ts)
            if len(self._partials) >= self.max_partial:
                self.counters["drop.reassembly-full"] += 1
                return
        self._partials[flow] = _Partial(next_seq, rest, ts)
        self.counters["held"] += 1

    # -- TCP order: each byte of a client->server flow is parsed once, in sequence order.
    # The C path decides the common cases itself (next in order, a new flow, a whole
    # retransmission) with the same rules; everything else comes here.

    def _syn(self, fk: bytes, seq: int, ts: float) -> None:
        """A SYN: the flow (re)starts; its first data byte is seq + 1."""
        stale = self._ooo.pop(fk, None) if self._ooo else None
        if stale:
            self.counters["drop.out-of-order"] += len(stale)
        self._set_next(fk, (seq + 1) & _M32, ts)

    def _order(self, fk: bytes, seq: int, payload: bytes, ts: float, flags: int) -> list[tuple[int, bytes]] | None:
        """The segments to parse now, in sequence order: None for "this one, as it is" (the
        common case), [] when it is a retransmission or waits for a gap before it."""
        counters = self.counters
        if flags & SYN:  # data on a SYN (TCP Fast Open) starts after the SYN's own number
            self._syn(fk, seq, ts)
            seq = (seq + 1) & _M32
        st = self._next.get(fk)
        trimmed = False
        if st is not None and ts - st[1] <= self.flow_ttl_s:
            d = _signed(seq - st[0])
            if -SEQ_WINDOW < d < 0:
                if d + len(payload) <= 0:  # all of it seen already
                    counters["drop.retransmission"] += 1
                    return []
                payload, seq, trimmed = payload[-d:], st[0], True  # new data behind a resent part
                counters["retransmission-trimmed"] += 1
            elif 0 < d < SEQ_WINDOW:
                return self._buffer(fk, st[0], seq, payload, ts)
            elif d:  # far off: the ports were reused by a new connection we saw no SYN of
                counters["flow-restarts"] += 1
                self._drop_ooo(fk)
        elif self._ooo:
            self._drop_ooo(fk)  # the flow was forgotten: what waited in it is lost
        end = (seq + len(payload)) & _M32
        self._set_next(fk, end, ts)
        if not (self._ooo and fk in self._ooo):
            return [(seq, payload)] if trimmed else None
        return [(seq, payload), *self._drain(fk, end, ts)]

    def _buffer(self, fk: bytes, expected: int, seq: int, payload: bytes, ts: float) -> list[tuple[int, bytes]]:
        """Hold a segment that came before the bytes in front of it. A gap still open after the
        TTL, or more than max_out_of_order bytes behind it, was lost before the capture: it is
        skipped (counted) and what waited is parsed."""
        counters = self.counters
        waiting = self._ooo.get(fk)
        if waiting is None:
            if len(self._ooo) >= self.max_partial:
                self.expire(ts)
                if len(self._ooo) >= self.max_partial:
                    counters["drop.out-of-order-full"] += 1
                    return []
            waiting = self._ooo[fk] = []
        waiting.append((seq, payload, ts))
        counters["out-of-order"] += 1
        if ts - waiting[0][2] <= self.partial_ttl_s and sum(len(w[1]) for w in waiting) <= self.max_out_of_order:
            return []
        counters["drop.tcp-gap"] += 1
        first = min(waiting, key=lambda w: _signed(w[0] - expected))[0]
        return self._drain(fk, first, ts)

    def _drain(self, fk: bytes, end: int, ts: float) -> list[tuple[int, bytes]]:
        """Waiting segments that now follow on from ``end``, in order; the rest keep waiting."""
        waiting = sorted(self._ooo.pop(fk), key=lambda w: _signed(w[0] - end))
        out = []
        for i, (seq, data, _ts) in enumerate(waiting):
            d = _signed(seq - end)
            if d > 0:
                self._ooo[fk] = waiting[i:]
                break
            if d + len(data) <= 0:
                self.counters["drop.retransmission"] += 1
                continue
            out.append((end, data[-d:] if d else data))
            end = (seq + len(data)) & _M32
        self._set_next(fk, end, ts)
        return out

    def _drop_ooo(self, fk: bytes) -> None:
        lost = self._ooo.pop(fk, None)
        if lost:
            self.counters["drop.out-of-order"] += len(lost)

    def _set_next(self, fk: bytes, end: int, ts: float) -> None:
        flows = self._next
        if len(flows) >= self.max_flows and fk not in flows:
            stale = [f for f, (_n, seen) in flows.items() if ts - seen > self.flow_ttl_s]
            for f in stale:
                del flows[f]
            if len(flows) > self.max_flows * 3 // 4:  # all busy: start over rather than sweep per packet
                flows.clear()
                self.counters["flows-reset"] += 1
        flows[fk] = (end, ts)

    def _fragment(self, frame: bytes, ts: float, linktype: int,
                  then: Callable[[bytes, float, int], list[RequestEvent]]) -> list[RequestEvent]:
        """An IP fragment: held until its datagram is whole, which then goes through ``then``."""
        frag = parse_fragment(frame, linktype)
        if isinstance(frag, str):
            self.counters["drop." + frag] += 1
            return []
        datagram = self.fragments.add(frag, ts)  # type: ignore[union-attr]
        return [] if datagram is None else then(datagram, ts, LINKTYPE_RAW)

    def expire(self, now: float) -> None:
        """Forget cut heads, out-of-order segments and fragments older than their TTL (capture
        time); they count as dropped."""
        stale = [f for f, p in self._partials.items() if now - p.ts > self.partial_ttl_s]
        for f in stale:
            del self._partials[f]
        self.counters["drop.incomplete-head"] += len(stale)
        for fk in [fk for fk, w in self._ooo.items() if now - w[0][2] > self.partial_ttl_s]:
            self._drop_ooo(fk)
        self.fragments.expire(now)  # type: ignore[union-attr]

    def flush(self) -> None:
        """Heads, segments and fragments still waiting at the end of a capture are dropped (and
        counted)."""
        self.counters["drop.incomplete-head"] += len(self._partials)
        self._partials.clear()
        for fk in list(self._ooo):
            self._drop_ooo(fk)
        self._next.clear()
        self.fragments.flush()  # type: ignore[union-attr]

    def _tls(self, src: str, payload: bytes, ts: float) -> list[RequestEvent]:
        if not payload:
            self.counters["drop.no-payload"] += 1
            return []
        name = parse_sni(payload)
        if name is None:
            self.counters["drop.not-client-hello"] += 1
            return []
        try:
            host, _port = split_host(name, "https")
        except BadUrl:
            self.counters["drop.bad-sni"] += 1
            return []
        if self.filters is not None and self.filters.host_ignored(host):
            self.counters["drop.ignored-rule"] += 1
            return []
        self.counters["tls-hosts"] += 1
        key = f"https://{host}/"
        return [RequestEvent(ts, self.hasher.client_id(src, ts), TLS_METHOD, host, "", key, key, "", "")]
