"""Unit tests for the eviction policy (cachestore/policy.py): a hand-checked trace, the ranking of
catalog rows, and the comparison against LRU on the generated trace (cachestore/tracegen.py)."""

from __future__ import annotations

from cachestore.policy import (
    Candidate,
    HeatPolicy,
    LruPolicy,
    PolicyParams,
    Request,
    choose_victims,
    compare,
    simulate,
)
from cachestore.tracegen import TraceParams, describe, generate


def test_hand_checked_trace() -> None:
    """Capacity 3 units. A (asked 3 times) and B (twice) are established; then a scan of
    one-timers C, D, E passes. LRU loses A and B to the scan; the heat policy demotes the new
    objects below the re-used ones and keeps A and B, so their later requests hit."""
    trace = [Request(t, k, 1) for t, k in enumerate("AABABCDEAB")]
    lru = simulate(trace, 3, LruPolicy(), max_object_fraction=1.0)
    heat = simulate(trace, 3, HeatPolicy(PolicyParams(half_life_s=100.0)), max_object_fraction=1.0)
    # LRU: hits at t=1 (A), 3 (A), 4 (B); then C D E flush A and B -> misses at 8, 9
    assert (lru.hits, lru.bytes_hit) == (3, 3)
    # heat: the same three, then A and B survive the scan (C, D, E evict each other)
    assert (heat.hits, heat.bytes_hit) == (5, 5)


def test_hot_prefetch_outranks_a_fill_and_ghosts_come_back() -> None:
    p = HeatPolicy(PolicyParams(half_life_s=100.0))
    p.insert("fill", 10, now=0.0)
    p.insert("hot", 10, now=0.0, heat=3)
    assert p.evict(5, now=1.0) == ["fill"]
    p.insert("fill", 10, now=2.0)  # back soon after its eviction: its history counts
    p.insert("new", 10, now=2.0)
    assert p.evict(5, now=3.0) == ["new"]
    assert p.used_bytes == 20 and "fill" in p and "hot" in p


def test_choose_victims_ranks_catalog_rows() -> None:
    rows = [Candidate("old-popular", 100, hits=50, last_activity=0.0),
            Candidate("new-never-hit", 100, hits=0, last_activity=3600.0),
            Candidate("recent-hit", 100, hits=2, last_activity=3600.0),
            Candidate("hot-prefetch", 100, hits=0, last_activity=3600.0, heat=4)]
    params = PolicyParams(half_life_s=3600.0)
    assert [c.key for c in choose_victims(rows, 150, params)] == ["new-never-hit", "recent-hit"]
    assert [c.key for c in choose_victims(rows, 1, params, keep=frozenset({"new-never-hit"}))] == ["recent-hit"]
    assert choose_victims(rows, 0, params) == []


def test_beats_lru_on_byte_hit_ratio() -> None:
    """At 1 %, 5 % and 10 % of the working set, on a generated trace with >= 30 % one-timers."""
    trace = generate(TraceParams(requests=60_000, objects=6_000, seed=7))
    assert describe(trace)["one_timer_objects"] >= 0.30
    results = compare(trace)
    by = {(round(r.capacity), r.policy): r for r in results}
    for cap in sorted({c for c, _ in by}):
        heat, lru = by[cap, "heat"], by[cap, "lru"]
        print(f"cache {cap:>14} bytes: heat {heat.byte_hit_ratio:.4f} lru {lru.byte_hit_ratio:.4f}")
        assert heat.byte_hit_ratio >= lru.byte_hit_ratio
