"""Eviction policy (pure: no I/O, time passed in) and a trace simulator around it.

The policy is a heat-aware, exponentially decayed frequency ("LRFU", Lee et al. 2001) with a
ghost list and one-timer demotion, measured in bytes:

- every object carries a decayed request count ``c`` (each request adds 1, the count halves
  every ``half_life_s``) and its last access time ``t``; the object to evict is the one with the
  smallest ``c * 2^(-(now - t)/h)``. The order of two objects does not change with ``now``, so
  the rank ``log2(c) + t/h`` is fixed between accesses and a heap finds the victim in O(log n);
- *heat-aware*: a prefetched object enters with the number of distinct clients streams saw
  (``heat``) as its count, an in-path fill with 1, so a hot prefetch is not the first victim;
- *one-timer demotion* (the S3-FIFO observation that most objects are never asked again): a new
  object with no history enters at ``new_weight`` < 1 and is the first to go unless asked again;
  a *ghost* list remembers recently evicted keys so that an object coming back soon after its
  eviction re-enters with its old (decayed) count, as S3-FIFO's ghost queue does;
- *size-aware*: ``size_exponent`` > 0 divides the rank by ``size^e`` (GDSF-like; favours object
  hit ratio). The default 0 optimises the byte hit ratio, which is what saves uplink bytes: per
  byte of cache, an object's value is its request probability, whatever its size. The store's
  per-object cap (a fraction of the quota) keeps one video from flushing everything
  (AdaptSize's concern, without its probabilistic admission).

Why this and not the others (docs/cache-store.md has the figures): S3-FIFO and SIEVE are tuned
for object hit ratio on unit-size objects; GDSF divides by size, which throws away the large
videos that dominate the bytes; LHD needs an online-learned hit-density table (too much machinery
for a catalog that the edge and the fetcher share). A decayed frequency beats LRU on the byte
hit ratio in :func:`compare` at 1 %, 5 % and 10 % of the working set, and its state is two
numbers per object, which the catalog already keeps (hits, last hit), so the store ranks catalog
rows with the same :func:`rank` (:func:`choose_victims`).

``replay`` and ``console`` call :class:`HeatPolicy`, :class:`LruPolicy`, :func:`simulate` and
:func:`compare` directly.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol


@dataclass(frozen=True, slots=True)
class PolicyParams:
    half_life_s: float = 4 * 3600.0  # how fast old requests stop counting
    new_weight: float = 0.5  # count of an object seen for the first time (demoted below a 1-hit one)
    heat_weight: float = 1.0  # count per distinct client of a prefetched (hot) object
    size_exponent: float = 0.0  # > 0 favours small objects (object hit ratio) over bytes
    ghost_fraction: float = 1.0  # ghost list length, as a multiple of the number of cached objects


def rank(count: float, last: float, size: int, params: PolicyParams) -> float:
    """log2 of the decayed count at any fixed ``now``, minus the size term: smaller goes first."""
    return math.log2(max(count, 1e-12)) + last / params.half_life_s - params.size_exponent * math.log2(max(size, 1))


def decayed(count: float, last: float, now: float, params: PolicyParams) -> float:
    return count * 2.0 ** (-(max(0.0, now - last)) / params.half_life_s)


class Policy(Protocol):
    """What the store and the simulator need from an eviction policy (all pure, time passed in)."""

    used_bytes: int

    def __contains__(self, key: object) -> bool: ...
    def __len__(self) -> int: ...
    def insert(self, key: str, size: int, now: float, heat: int = 0) -> None: ...
    def access(self, key: str, now: float) -> None: ...
    def remove(self, key: str) -> None: ...
    def evict(self, need_bytes: int, now: float) -> list[str]: ...


class LruPolicy:
    """The baseline: least recently used, in bytes."""

    def __init__(self) -> None:
        self.order: OrderedDict[str, int] = OrderedDict()
        self.used_bytes = 0

    def __contains__(self, key: object) -> bool:
        return key in self.order

    def __len__(self) -> int:
        return len(self.order)

    def insert(self, key: str, size: int, now: float, heat: int = 0) -> None:
        self.remove(key)
        self.order[key] = size
        self.used_bytes += size

    def access(self, key: str, now: float) -> None:
        self.order.move_to_end(key)

    def remove(self, key: str) -> None:
        size = self.order.pop(key, None)
        if size is not None:
            self.used_bytes -= size

    def evict(self, need_bytes: int, now: float) -> list[str]:
        out: list[str] = []
        freed = 0
        while freed < need_bytes and self.order:
            key, size = self.order.popitem(last=False)
            self.used_bytes -= size
            freed += size
            out.append(key)
        return out


class HeatPolicy:
    """Decayed frequency with heat on insert, one-timer demotion and a ghost list (see module doc)."""

    def __init__(self, params: PolicyParams | None = None) -> None:
        self.params = params or PolicyParams()
        self.objects: dict[str, tuple[float, float, int, float]] = {}  # key -> (count, last, size, rank)
        self.heap: list[tuple[float, str]] = []
        self.ghosts: OrderedDict[str, tuple[float, float]] = OrderedDict()  # evicted key -> (count, last)
        self.used_bytes = 0

    def __contains__(self, key: object) -> bool:
        return key in self.objects

    def __len__(self) -> int:
        return len(self.objects)

    def _put(self, key: str, count: float, last: float, size: int) -> None:
        r = rank(count, last, size, self.params)
        self.objects[key] = (count, last, size, r)
        heapq.heappush(self.heap, (r, key))
        if len(self.heap) > 4 * len(self.objects) + 1024:  # drop stale heap entries now and then
            self.heap = [(v[3], k) for k, v in self.objects.items()]
            heapq.heapify(self.heap)

    def insert(self, key: str, size: int, now: float, heat: int = 0) -> None:
        p = self.params
        self.remove(key)
        ghost = self.ghosts.pop(key, None)
        count = p.new_weight if heat <= 0 else p.heat_weight * heat
        if ghost is not None:  # asked again soon after we dropped it: it was not a one-timer
            count = max(count, decayed(ghost[0], ghost[1], now, p) + 1.0)
        self.used_bytes += size
        self._put(key, count, now, size)

    def access(self, key: str, now: float) -> None:
        count, last, size, _ = self.objects[key]
        self._put(key, decayed(count, last, now, self.params) + 1.0, now, size)

    def remove(self, key: str) -> None:
        old = self.objects.pop(key, None)
        if old is not None:
            self.used_bytes -= old[2]

    def evict(self, need_bytes: int, now: float) -> list[str]:
        out: list[str] = []
        freed = 0
        limit = max(16, int(self.params.ghost_fraction * (len(self.objects) + 1)))
        while freed < need_bytes and self.heap:
            r, key = heapq.heappop(self.heap)
            cur = self.objects.get(key)
            if cur is None or cur[3] != r:
                continue  # stale heap entry (accessed or removed since)
            del self.objects[key]
            self.used_bytes -= cur[2]
            freed += cur[2]
            out.append(key)
            self.ghosts[key] = (cur[0], cur[1])
            self.ghosts.move_to_end(key)
        while len(self.ghosts) > limit:
            self.ghosts.popitem(last=False)
        return out


# -- the store's use: rank catalog rows with the same rank() --------------------------------------
class Candidate(NamedTuple):
    """What the catalog knows of a cached object, for ranking."""

    key: str
    size: int
    hits: int
    last_activity: float  # last hit, or when it was stored
    heat: int = 0


def choose_victims(candidates: Iterable[Candidate], need_bytes: int, params: PolicyParams | None = None,
                   keep: frozenset[str] = frozenset()) -> list[Candidate]:
    """Lowest-ranked objects first until ``need_bytes`` are freed (pure). The catalog keeps a
    plain hit count, so the count is ``hits + heat`` (or ``new_weight`` for an object never
    hit), not decayed: the decay of its age is in the ``last_activity`` term of the rank."""
    p = params or PolicyParams()
    if need_bytes <= 0:
        return []

    def count(c: Candidate) -> float:
        base = c.hits + p.heat_weight * c.heat
        return base if base > 0 else p.new_weight

    ordered = sorted((c for c in candidates if c.key not in keep),
                     key=lambda c: (rank(count(c), c.last_activity, c.size, p), c.key))
    out: list[Candidate] = []
    freed = 0
    for c in ordered:
        if freed >= need_bytes:
            break
        out.append(c)
        freed += c.size
    return out


# -- simulation (for tests, the comparison table and replay) --------------------------------------
class Request(NamedTuple):
    ts: float
    key: str
    size: int


@dataclass(frozen=True, slots=True)
class SimResult:
    policy: str
    capacity: int
    requests: int
    hits: int
    bytes_requested: int
    bytes_hit: int

    @property
    def hit_ratio(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    @property
    def byte_hit_ratio(self) -> float:
        return self.bytes_hit / self.bytes_requested if self.bytes_requested else 0.0


def simulate(trace: Iterable[Request], capacity: int, policy: Policy, name: str = "",
             max_object_fraction: float = 0.25) -> SimResult:
    """Replay ``trace`` through ``policy`` with a byte capacity: every miss is stored (in-path fill)
    unless it is over the per-object cap, evicting first."""
    cap = max(1, int(capacity * max_object_fraction))
    requests = hits = total = hit_bytes = 0
    for ts, key, size in trace:
        requests += 1
        total += size
        if key in policy:
            hits += 1
            hit_bytes += size
            policy.access(key, ts)
            continue
        if size > cap:
            continue
        over = policy.used_bytes + size - capacity
        if over > 0:
            policy.evict(over, ts)
        policy.insert(key, size, ts)
    return SimResult(name or type(policy).__name__, capacity, requests, hits, total, hit_bytes)


POLICIES: dict[str, Callable[[], Policy]] = {"lru": LruPolicy, "heat": HeatPolicy}


def working_set_bytes(trace: Sequence[Request]) -> int:
    sizes: dict[str, int] = {}
    for r in trace:
        sizes[r.key] = r.size
    return sum(sizes.values())


def compare(trace: Sequence[Request], fractions: Sequence[float] = (0.01, 0.05, 0.10),
            policies: dict[str, Callable[[], Policy]] | None = None) -> list[SimResult]:
    """Each policy at each fraction of the trace's working set (bytes of distinct objects)."""
    ws = working_set_bytes(trace)
    out: list[SimResult] = []
    for frac in fractions:
        for name, make in (policies or POLICIES).items():
            out.append(simulate(trace, max(1, int(ws * frac)), make(), name))
    return out
