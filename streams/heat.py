"""Pure heat logic: a sliding event-time window per cache key and the admission rule.

State per key is a small JSON-able dict, updated once per key per batch (not once per event),
so table writes scale with distinct keys, not with traffic:

    {"c": {client_id: last_seen_ts}, "t": [request ts ...], "e": ts_of_last_emission}

A window slides on event time: entries older than (newest event - window) are pruned. The
number of tracked clients and request stamps is capped; a cap above the thresholds loses
nothing the rule needs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from heatcache.cachekey import key_host
from heatcache.contract import HotUrl, RequestEvent

KeyState = dict[str, Any]
ADMISSIBLE = frozenset({"GET", "HEAD"})


@dataclass(frozen=True, slots=True)
class HeatRule:
    """Admit a key when it has at least ``min_clients`` distinct clients and ``min_requests``
    requests within ``window_s`` seconds of event time. ``min_clients=1`` caches on first access."""

    window_s: int = 24 * 3600
    min_clients: int = 2
    min_requests: int = 1
    max_tracked: int = 64

    def __post_init__(self) -> None:
        if self.window_s <= 0 or self.min_clients < 1 or self.min_requests < 1:
            raise ValueError("window_s > 0, min_clients >= 1 and min_requests >= 1 are required")
        if self.max_tracked < max(self.min_clients, self.min_requests):
            raise ValueError("max_tracked must be at least the thresholds it tracks")


def group_by_key(events: Iterable[RequestEvent]) -> dict[str, list[RequestEvent]]:
    """Aggregate a batch before touching state: one state write per distinct key.

    Host-level TLS events (no URL to fetch) are left out: they are reported, never admitted.
    """
    out: dict[str, list[RequestEvent]] = defaultdict(list)
    for ev in events:
        if ev.method in ADMISSIBLE:
            out[ev.cache_key].append(ev)
    return out


def update(state: KeyState | None, events: list[RequestEvent], rule: HeatRule) -> tuple[KeyState, HotUrl | None]:
    """Fold a key's new events into its state; return the new state and a HotUrl if admitted."""
    clients: dict[str, float] = dict((state or {}).get("c", {}))
    stamps: list[float] = list((state or {}).get("t", []))
    emitted: float = float((state or {}).get("e", 0.0))
    newest = max([ev.ts for ev in events] + stamps + [0.0])
    for ev in events:
        if ev.ts > clients.get(ev.client, -1.0):
            clients[ev.client] = ev.ts
        stamps.append(ev.ts)
    horizon = newest - rule.window_s
    clients = {c: t for c, t in clients.items() if t > horizon}
    if len(clients) > rule.max_tracked:  # keep the most recent
        clients = dict(sorted(clients.items(), key=lambda kv: kv[1])[-rule.max_tracked :])
    stamps = sorted(t for t in stamps if t > horizon)[-rule.max_tracked :]
    hot = None
    already = emitted > horizon and emitted != 0.0
    if not already and len(clients) >= rule.min_clients and len(stamps) >= rule.min_requests:
        last = max(events, key=lambda e: e.ts)
        hot = HotUrl(
            cache_key=last.cache_key,
            url=last.url,
            host=key_host(last.cache_key),
            heat=len(stamps),
            clients=len(clients),
            window_s=rule.window_s,
            ts=last.ts,
            reason="first-access" if rule.min_clients == 1 and rule.min_requests == 1 else "heat",
        )
        emitted = last.ts
    return {"c": clients, "t": stamps, "e": emitted}, hot
