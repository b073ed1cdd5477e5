"""Pure mapping from parsed packets to RequestEvents: filtering, client pseudonyms, cache keys."""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter
from dataclasses import dataclass, field

from heatcache.cachekey import BadUrl, KeyRules, cache_key
from heatcache.contract import RequestEvent
from sniffer.parse import LINKTYPE_ETHERNET, parse_frame, parse_requests, ua_class

KEEP_METHODS = frozenset({"GET", "HEAD"})


@dataclass(frozen=True, slots=True)
class ClientHasher:
    """Pseudonymous client ids: HMAC-SHA256 of the address under a key rotated every period."""

    secret: bytes
    rotation_s: int

    def client_id(self, address: str, ts: float) -> str:
        epoch = int(ts // self.rotation_s)
        key = hmac.new(self.secret, epoch.to_bytes(8, "big"), hashlib.sha256).digest()
        return hmac.new(key, address.encode(), hashlib.sha256).hexdigest()[:20]


@dataclass(slots=True)
class FrameParser:
    """Turns captured frames into RequestEvents and counts every drop by reason."""

    ports: frozenset[int]
    rules: KeyRules
    hasher: ClientHasher
    ignore: frozenset[str] = frozenset()
    counters: Counter[str] = field(default_factory=Counter)

    def events(self, frame: bytes, ts: float, linktype: int = LINKTYPE_ETHERNET) -> list[RequestEvent]:
        self.counters["packets"] += 1
        seg = parse_frame(frame, linktype)
        if isinstance(seg, str):
            self.counters["drop." + seg] += 1
            return []
        if seg.dport not in self.ports:
            self.counters["drop.other-port"] += 1
            return []
        if seg.src in self.ignore or seg.dst in self.ignore:
            self.counters["drop.ignored-address"] += 1
            return []
        if not seg.payload:
            self.counters["drop.no-payload"] += 1
            return []
        requests, rejects = parse_requests(seg.payload)
        for reason in rejects:
            self.counters["drop." + reason] += 1
        out = []
        for req in requests:
            if req.method not in KEEP_METHODS:
                self.counters["drop.method"] += 1
                continue
            try:
                key = cache_key(req.host, req.target, self.rules)
            except BadUrl:
                self.counters["drop.bad-url"] += 1
                continue
            host_header = key.partition("://")[2].partition("/")[0].partition("?")[0]
            path = req.target if req.target.startswith("/") else "/" + req.target.partition("://")[2].partition("/")[2]
            out.append(
                RequestEvent(
                    ts=ts,
                    client=self.hasher.client_id(seg.src, ts),
                    method=req.method,
                    host=host_header,
                    path=path,
                    url=f"http://{host_header}{path}",
                    cache_key=key,
                    range=req.range,
                    ua_class=ua_class(req.user_agent),
                )
            )
        self.counters["requests"] += len(out)
        return out
