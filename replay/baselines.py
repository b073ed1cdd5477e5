"""Baselines on the same trace and cache size: what a setting should be compared with.

- ``no cache``: nothing served locally (net savings 0 by definition);
- in-path caches that store every miss (a proxy cache in front of everyone): the store's LRU
  (``cachestore.policy.simulate``), and libcachesim's LRU and S3-FIFO (the optional
  ``[replay]`` extra; its LRU cross-checks ours, tests/replay/test_engine.py
  ``test_bounds_hold_and_lru_matches_libcachesim``);
- the offline ceiling: exact Belady (furthest next use, with bypass) when every object has the
  same size; with mixed sizes, where the exact optimum is NP-hard, the PFOO-U upper bound
  (Berger et al., SIGMETRICS 2018): every reuse interval costs size x length of cache-time and
  the cache offers capacity x trace length of it; taking the cheapest intervals per byte first
  bounds the byte hits of any policy from above (labelled "bound", not a policy);
- the oracle prefetcher: replay.engine.OracleAdmission through the same engine.

Every function is pure: a list of (ts, key, size) in, numbers out.
"""

from __future__ import annotations

import heapq
import os
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from cachestore.policy import LruPolicy, simulate
from cachestore.policy import Request as StoreRequest


class Req(NamedTuple):
    ts: float
    key: str
    size: int


@dataclass(frozen=True)
class Baseline:
    name: str
    capacity: int
    requests: int
    hits: int
    bytes_requested: int
    bytes_hit: int
    label: str = ""  # "bound" for an upper bound that no policy reaches

    @property
    def hit_ratio(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    @property
    def byte_hit_ratio(self) -> float:
        return self.bytes_hit / self.bytes_requested if self.bytes_requested else 0.0

    @property
    def net_savings(self) -> float:
        """In-path caches download nothing extra: their savings are their byte hits."""
        return self.byte_hit_ratio

    def row(self) -> dict[str, object]:
        return {"setting": self.name, "capacity": self.capacity, "requests": self.requests, "hits": self.hits,
                "bytes_requested": self.bytes_requested, "bytes_local": self.bytes_hit, "label": self.label,
                "hit_ratio": self.hit_ratio, "byte_hit_ratio": self.byte_hit_ratio,
                "net_savings": self.net_savings}


def store_lru(trace: Sequence[Req], capacity: int) -> Baseline:
    """The store's LRU as an in-path cache (every miss stored when it fits)."""
    r = simulate((StoreRequest(*t) for t in trace), capacity, LruPolicy(), "lru", max_object_fraction=1.0)
    return Baseline("in-path LRU (cachestore)", capacity, r.requests, r.hits, r.bytes_requested, r.bytes_hit)


def libcachesim_available() -> bool:
    try:
        import libcachesim  # noqa: F401
    except ImportError:
        return False
    return True


def write_oracle_general(trace: Sequence[Req], path: str) -> None:
    """libcachesim's binary oracleGeneral format: (uint32 ts, uint64 id, uint32 size, int64 next)."""
    ids: dict[str, int] = {}
    pack = struct.Struct("<IQIq").pack
    t0 = trace[0].ts if trace else 0.0
    with open(path, "wb") as fh:
        fh.write(b"".join(pack(int(t.ts - t0), ids.setdefault(t.key, len(ids) + 1), min(t.size, 2**32 - 1) or 1, -1)
                          for t in trace))


def libcachesim_run(trace: Sequence[Req], capacity: int, policy: str, path: str | None = None) -> Baseline:
    """libcachesim's ``policy`` ("LRU", "S3FIFO", ...) on the trace, in C (process_trace)."""
    import libcachesim as lcs

    own = path is None
    if path is None:
        fd, path = tempfile.mkstemp(suffix=".oracleGeneral")
        os.close(fd)
        write_oracle_general(trace, path)
    try:
        reader = lcs.TraceReader(path, lcs.TraceType.ORACLE_GENERAL_TRACE)
        cache = getattr(lcs, policy)(capacity)
        miss_ratio, byte_miss_ratio = cache.process_trace(reader)
    finally:
        if own:
            os.unlink(path)
    n = len(trace)
    total = sum(t.size for t in trace)
    hits = round((1 - miss_ratio) * n)
    return Baseline(f"in-path {policy} (libcachesim)", capacity, n, hits, total, round((1 - byte_miss_ratio) * total))


def next_uses(keys: Sequence[str]) -> list[int]:
    """For each position, the position of the same key's next request (len(keys) if none)."""
    out = [0] * len(keys)
    last: dict[str, int] = {}
    for i in range(len(keys) - 1, -1, -1):
        out[i] = last.get(keys[i], len(keys))
        last[keys[i]] = i
    return out


def belady(trace: Sequence[Req], slots: int) -> Baseline:
    """Exact offline optimum of the hit count for unit-size objects (``slots`` objects fit):
    on a miss, keep the ``slots`` objects whose next use is soonest (bypass allowed)."""
    keys = [t.key for t in trace]
    nxt = next_uses(keys)
    cached: dict[str, int] = {}  # key -> its next use
    heap: list[tuple[int, str]] = []  # (-next use, key), lazily cleaned
    hits = 0
    for i, key in enumerate(keys):
        if key in cached:
            hits += 1
        elif slots <= 0:
            continue
        cached[key] = nxt[i]
        heapq.heappush(heap, (-nxt[i], key))
        while len(cached) > slots:
            neg, victim = heapq.heappop(heap)
            if cached.get(victim) == -neg:
                del cached[victim]  # furthest next use (possibly the new one itself: bypass)
    n = len(trace)
    size = trace[0].size if trace else 0
    return Baseline("offline optimum (Belady, unit sizes)", slots * size, n, hits, n * size, hits * size)


def pfoo_upper(trace: Sequence[Req], capacity: int) -> Baseline:
    """PFOO-U: an upper bound on the byte hits of any policy with ``capacity`` bytes (sizes mixed).

    Each reuse interval (a request and its key's next request, ``length`` requests apart) would
    need ``size * length`` byte-requests of cache to turn that next request into a hit; the cache
    has ``capacity * len(trace)`` of them in all. Byte hits per unit of that resource are
    ``1 / length``, so the fractional optimum takes the shortest intervals first."""
    keys = [t.key for t in trace]
    nxt = next_uses(keys)
    n = len(trace)
    intervals = sorted((nxt[i] - i, trace[i].size, nxt[i]) for i in range(n) if nxt[i] < n)
    budget = float(capacity) * n
    hit_bytes = 0.0
    hits = 0.0
    for length, size, j in intervals:
        cost = float(size) * length
        if size > capacity:
            continue
        take = min(1.0, budget / cost) if cost else 1.0
        if take <= 0:
            break
        hit_bytes += take * trace[j].size
        hits += take
        budget -= take * cost
    total = sum(t.size for t in trace)
    return Baseline("offline bound (PFOO-U, mixed sizes)", capacity, n, int(hits), total, int(hit_bytes),
                    label="bound")


def ceiling(trace: Sequence[Req], capacity: int) -> Baseline:
    """The offline ceiling for this trace: exact Belady when sizes are equal, else PFOO-U;
    with no byte quota (capacity 0) every re-request can hit."""
    if capacity <= 0:
        seen: set[str] = set()
        hits = hit_bytes = 0
        for t in trace:
            if t.key in seen:
                hits += 1
                hit_bytes += t.size
            seen.add(t.key)
        return Baseline("offline optimum (no quota: every re-request)", 0, len(trace), hits,
                        sum(t.size for t in trace), hit_bytes)
    sizes = {t.size for t in trace}
    if len(sizes) == 1:
        size = sizes.pop()
        return belady(trace, capacity // max(size, 1))
    return pfoo_upper(trace, capacity)
