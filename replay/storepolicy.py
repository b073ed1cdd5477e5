"""What the cache store evicts, without the store's disk and database: replay's ``store`` policy.

``cachestore.store.ObjectStore`` makes room by ranking its catalog rows with
``cachestore.policy.choose_victims``: per cached object the catalog's plain hit count plus the
heat it was admitted with (``new_weight`` for an object never hit and not hot), its last
activity (last hit or when it was stored) and its size, lowest rank first, ties by key. The rows
outlive an eviction, and a refetch keeps the hits and last hit the edge counted
(``cachestore.catalog._KEEP_ON_UPSERT``).

:class:`StorePolicy` keeps exactly those columns per key and gives the same victims in the same
order. It does not sort the whole cache on every eviction as ``choose_victims`` does (that is
O(n log n) per stored object, too slow for a grid over a million requests): a row's rank depends
only on its own columns, never on the time of the eviction, so a heap of ``(rank, key)`` pops
the same sequence. The heap is lazy: a hit only raises a row's rank (one more hit, a later last
hit), so a hit changes the row and pushes nothing; an entry popped with a rank below its row's
current one is pushed again with the current rank. Every cached row has one live entry whose
rank is at most its current rank, so the first popped entry that is current is the lowest
``(rank, key)`` of all rows: the same victim ``choose_victims`` picks. A commit (new size, time
and heat: the rank may go down) pushes a new entry and makes the older ones stale.
``check=True`` also runs ``choose_victims`` on the same candidates and asserts the two agree
(the tests do); tests/replay/test_store_equal.py drives a real ObjectStore with a real catalog
through the same operations and compares the contents. replay._engine.StorePolicy is its
compiled twin (the same rows, heap and victims; tests/replay/test_compiled.py).
"""

from __future__ import annotations

import heapq

from cachestore.policy import Candidate, PolicyParams, choose_victims, rank


class _Row:
    """The catalog columns the store ranks on (``cachestore.catalog.Entry``'s subset)."""

    __slots__ = ("cached", "fetched_at", "heat", "hits", "last_hit", "size", "version")

    def __init__(self) -> None:
        self.size = 0
        self.hits = 0
        self.last_hit = 0.0
        self.fetched_at = 0.0
        self.heat = 0
        self.cached = False
        self.version = 0


class StorePolicy:
    """The store's eviction order over its catalog's columns, incrementally (see module doc).
    Implements ``cachestore.policy.Policy`` (time passed in, no I/O)."""

    def __init__(self, params: PolicyParams | None = None, check: bool = False) -> None:
        self.params = params or PolicyParams()
        self.rows: dict[str, _Row] = {}
        self.heap: list[tuple[float, str, int]] = []
        self.cached = 0
        self.used_bytes = 0
        self.check = check

    def __contains__(self, key: object) -> bool:
        row = self.rows.get(key)  # type: ignore[call-overload]
        return row is not None and row.cached

    def __len__(self) -> int:
        return self.cached

    def candidate(self, key: str) -> Candidate:
        """The row as ``ObjectStore._evict`` hands it to ``choose_victims``."""
        r = self.rows[key]
        return Candidate(key, r.size, r.hits, max(r.last_hit, r.fetched_at), r.heat)

    def _rank(self, key: str, r: _Row) -> float:
        p = self.params
        count = r.hits + p.heat_weight * r.heat  # choose_victims' count of a catalog row
        return rank(count if count > 0 else p.new_weight, max(r.last_hit, r.fetched_at), r.size, p)

    def _push(self, key: str, r: _Row) -> None:
        r.version += 1
        heapq.heappush(self.heap, (self._rank(key, r), key, r.version))
        if len(self.heap) > 4 * self.cached + 1024:  # drop stale entries now and then
            self.heap = [(self._rank(k, v), k, v.version) for k, v in self.rows.items() if v.cached]
            heapq.heapify(self.heap)

    def insert(self, key: str, size: int, now: float, heat: int = 0) -> None:
        """A commit: the row's size, fetched_at and heat are the new copy's, hits are kept."""
        r = self.rows.get(key)
        if r is None:
            r = self.rows[key] = _Row()
        elif r.cached:
            self.used_bytes -= r.size
            self.cached -= 1
        r.size, r.fetched_at, r.heat, r.cached = size, now, heat, True
        self.used_bytes += size
        self.cached += 1
        self._push(key, r)

    def access(self, key: str, now: float) -> None:
        """A hit the edge recorded (``Catalog.record_hits``: hits + 1, last hit = the later)."""
        r = self.rows[key]
        p = self.params
        before = r.hits + p.heat_weight * r.heat
        r.hits += 1
        if now > r.last_hit:
            r.last_hit = now
        if before <= 0 < p.new_weight and before + 1 < p.new_weight:
            self._push(key, r)  # a first hit counted below new_weight: the rank went down
        # otherwise the rank only went up: its heap entry is re-ranked when popped (module doc)

    def remove(self, key: str) -> None:
        r = self.rows.get(key)
        if r is not None and r.cached:
            r.cached = False
            self.used_bytes -= r.size
            self.cached -= 1

    def evict(self, need_bytes: int, now: float) -> list[str]:
        expected = None
        if self.check:
            expected = [c.key for c in choose_victims([self.candidate(k) for k, r in self.rows.items() if r.cached],
                                                      need_bytes, self.params)]
        out: list[str] = []
        freed = 0
        heap, rows = self.heap, self.rows
        while freed < need_bytes and heap:
            entry_rank, key, version = heapq.heappop(heap)
            r = rows[key]
            if not r.cached or r.version != version:
                continue  # stale: the row was stored again (or left) since this entry was pushed
            current = self._rank(key, r)
            if current > entry_rank:  # hit since it was pushed: back in at its current rank
                heapq.heappush(heap, (current, key, version))
                continue
            r.cached = False
            self.used_bytes -= r.size
            self.cached -= 1
            freed += r.size
            out.append(key)
        if expected is not None:
            assert out == expected, f"StorePolicy evicted {out}, choose_victims {expected}"
        return out
