"""Steering leaks, measured (pure): the bypass ratio of every steered host.

A steered host's clients should all reach the cache node. The sniffer watches the gateway and
ignores the node's own traffic (``HEATCACHE_IGNORE_ADDRESSES``), so every request it still sees
for a steered host went to an origin address: a client that bypassed the steering (a DNS answer
cached from before, a hard-coded resolver, DoH, IPv6 to the origin). The bypass ratio of a host
over a sliding window is

    bypassed / (bypassed + served)

with ``bypassed`` the sniffer's requests for the host while it was steered and ``served`` the
requests the edge (HTTP) and the TLS passthrough handled for it in the same window. Bypassed
requests are also counted per client network (named like the console's savings networks), so
an operator sees *who* bypasses.

A request counts only if its host was steered *when it was captured*: :class:`SteeringSwitch`
is the timeline of the operator's kill switch (the `control` topic), so while steering is
stopped (and for one DNS TTL after it is started again, while clients still hold the origin's
address) nothing is a bypass.

Time is passed in everywhere (seconds since the epoch: the sniffer's capture time for bypassed
requests, the edge's wall clock for served ones); nothing here does I/O.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


def bypass_ratio(bypassed: int, served: int) -> float | None:
    """The share of a host's requests that went around the cache node; None with no requests."""
    total = bypassed + served
    return bypassed / total if total > 0 else None


@dataclass(frozen=True)
class HostBypass:
    """One steered host's figures over the window."""

    bypassed: int
    served: int
    ratio: float | None
    networks: dict[str, int]  # client network name -> bypassed requests


@dataclass
class _Bucket:
    start: float
    bypassed: Counter[str] = field(default_factory=Counter)
    served: Counter[str] = field(default_factory=Counter)
    networks: Counter[tuple[str, str]] = field(default_factory=Counter)


class BypassMeter:
    """Bypassed and served requests per host in time buckets, kept for ``window_s``.

    Bounded: at most ``max_hosts`` distinct hosts per bucket are counted (the rest are dropped
    and counted in ``overflow``) and buckets older than the window are forgotten."""

    def __init__(self, window_s: float = 300.0, bucket_s: float = 10.0, max_hosts: int = 2000) -> None:
        if window_s <= 0 or bucket_s <= 0:
            raise ValueError("window_s and bucket_s must be positive")
        self.window_s = window_s
        self.bucket_s = min(bucket_s, window_s)
        self.max_hosts = max_hosts
        self.buckets: dict[float, _Bucket] = {}  # by start time
        self.newest = float("-inf")
        self.overflow = 0

    def _bucket(self, ts: float) -> _Bucket | None:
        start = ts - ts % self.bucket_s
        b = self.buckets.get(start)
        if b is None:
            if start + self.bucket_s <= self.newest - self.window_s:
                return None  # older than anything the window keeps
            b = self.buckets[start] = _Bucket(start)
            self.newest = max(self.newest, start)
        return b

    def _room(self, b: _Bucket, host: str) -> bool:
        if host in b.served or host in b.bypassed or len(b.served) + len(b.bypassed) < self.max_hosts:
            return True
        self.overflow += 1
        return False

    def bypassed(self, host: str, network: str, ts: float, n: int = 1) -> None:
        """``n`` requests for steered ``host`` seen going to an origin, from ``network``."""
        b = self._bucket(ts)
        if b is not None and self._room(b, host):
            b.bypassed[host] += n
            b.networks[(host, network)] += n

    def served(self, host: str, ts: float, n: int = 1) -> None:
        """``n`` requests for ``host`` handled by the cache node."""
        b = self._bucket(ts)
        if b is not None and self._room(b, host):
            b.served[host] += n

    def expire(self, now: float) -> None:
        for start in [s for s in self.buckets if s + self.bucket_s <= now - self.window_s]:
            del self.buckets[start]

    def figures(self, now: float) -> dict[str, HostBypass]:
        """Every host with requests in the window ending at ``now``."""
        self.expire(now)
        bypassed: Counter[str] = Counter()
        served: Counter[str] = Counter()
        nets: dict[str, Counter[str]] = {}
        for b in self.buckets.values():
            if b.start > now:
                continue  # ahead of now (clock skew between sniffer and edge): counted later
            bypassed.update(b.bypassed)
            served.update(b.served)
            for (host, net), n in b.networks.items():
                nets.setdefault(host, Counter())[net] += n
        return {h: HostBypass(bypassed[h], served[h], bypass_ratio(bypassed[h], served[h]),
                              dict(sorted(nets.get(h, Counter()).items())))
                for h in sorted(set(bypassed) | set(served))}


class SteeringSwitch:
    """When steering was on, from the kill switch's changes (pure; times in seconds since the epoch).

    ``set(stopped, ts)`` records a change at ``ts`` (a ControlEvent's time); ``steered_at(ts)``
    says whether a request captured at ``ts`` was steered: not while stopped, and not within
    ``grace_s`` (one DNS TTL) after a start, when clients may still hold the origin's address.
    Before the first known change the opposite of that change held (the compacted `control`
    topic keeps only the latest switch); with no change at all, steering is on. ``always_off``
    (``HEATCACHE_DNS_STEERING=false``): never steered, whatever the switch says. Changes older
    than ``keep_s`` are folded away (the latest of them is kept as the starting state)."""

    def __init__(self, grace_s: float = 0.0, keep_s: float = 3600.0, always_off: bool = False) -> None:
        self.grace_s = grace_s
        self.keep_s = keep_s
        self.always_off = always_off
        self.changes: list[tuple[float, bool]] = []  # (ts, stopped), ascending ts

    @property
    def stopped(self) -> bool:
        """The current position of the switch."""
        return self.always_off or (bool(self.changes) and self.changes[-1][1])

    def set(self, stopped: bool, ts: float) -> None:
        if self.changes and self.changes[-1][1] == stopped:
            return  # no change (a repeated switch, or the same record read again)
        self.changes.append((ts, stopped))
        self.changes.sort(key=lambda c: c[0])
        cutoff = ts - self.keep_s
        while len(self.changes) > 1 and self.changes[1][0] <= cutoff:
            self.changes.pop(0)

    def steered_at(self, ts: float) -> bool:
        if self.always_off:
            return False
        if not self.changes:
            return True
        before: tuple[float, bool] | None = None
        for change in self.changes:
            if change[0] > ts:
                break
            before = change
        if before is None:  # earlier than anything known: the opposite of the first change held
            return self.changes[0][1]
        at, stopped = before
        return not stopped and ts - at >= self.grace_s


def high_bypass(figures: dict[str, HostBypass], threshold: float, min_requests: int) -> list[str]:
    """Hosts whose ratio is above ``threshold`` with at least ``min_requests`` in the window (a
    handful of requests says nothing)."""
    return [h for h, f in figures.items()
            if f.ratio is not None and f.bypassed + f.served >= min_requests and f.ratio > threshold]


def max_ratio(figures: dict[str, HostBypass], min_requests: int) -> float:
    """The highest ratio among hosts with enough requests (0 with none): the alertable figure."""
    return max((f.ratio for f in figures.values()
                if f.ratio is not None and f.bypassed + f.served >= min_requests), default=0.0)


def record_fields(figures: dict[str, HostBypass]) -> dict[str, float | int]:
    """The per-host fields of the ``edge-top`` record on `metrics`: ``bypass_ratio.<host>`` (what
    the console reads), ``bypassed.<host>``, ``served.<host>`` and ``bypassed.<host>@<network>``."""
    out: dict[str, float | int] = {}
    for host, f in figures.items():
        if f.ratio is not None:
            out["bypass_ratio." + host] = round(f.ratio, 4)
        out["bypassed." + host] = f.bypassed
        out["served." + host] = f.served
        for net, n in f.networks.items():
            out[f"bypassed.{host}@{net}"] = n
    return out
