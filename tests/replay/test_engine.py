"""The engine on small hand-checked traces: hit ratios, net savings and the Belady ceiling are
worked out by hand in the comments."""

from __future__ import annotations

import random

import pytest

from heatcache.contract import RequestEvent
from heatcache.settings import Settings
from replay import baselines
from replay.baselines import Req
from replay.engine import Prepared, Setting, prepare, run
from replay.grid import Outcome, grid, run_baselines, run_grid
from replay.trace import Trace, batches


def hand_trace(rows: list[tuple[float, str, str]], size: int = 100) -> Prepared:
    trace = Trace()
    for ts, client, path in rows:
        url = f"http://h.test{path}"
        trace.add(RequestEvent(1_790_000_000.0 + ts, client, "GET", "h.test", path, url, url), size, 200)
    return prepare(list(batches(trace, partitions=1)))


# a asked by c1, c2 (admitted: 2 clients), c3; b by c1, c2; c by c3 once
ROWS = [(0, "c1", "/a"), (10, "c2", "/a"), (20, "c3", "/a"), (30, "c1", "/b"), (40, "c2", "/b"), (50, "c3", "/c")]


def test_prefetch_steers_and_the_edge_fills(base_settings: Settings) -> None:
    # t10: /a admitted -> prefetched (100 B), h.test steered; t20 hit; t30 /b filled in path, t40 hit;
    # t50 /c filled, never asked again. Local 200 of 600 B, prefetched 100: net savings 1/6.
    r = run(hand_trace(ROWS), Setting(window_s=3600, min_clients=2), base_settings, keep_hot=True)
    assert (r.requests, r.hits, r.bytes_requested, r.bytes_local) == (6, 2, 600, 200)
    assert (r.prefetches, r.bytes_prefetched, r.fills, r.bytes_filled) == (1, 100, 2, 200)
    assert r.net_savings == pytest.approx(1 / 6) and r.hit_ratio == pytest.approx(1 / 3)
    assert (r.prefetches_never_hit, r.hosts_steered, r.median_first_hit_s) == (0, 1, 20.0)  # firsts: b 10 s, a 20 s
    assert [k for k, _ in r.hot] == ["http://h.test/a"] and r.cached_at_end == [
        "http://h.test/a", "http://h.test/b", "http://h.test/c"]


def test_prefetch_without_fill_costs_more_than_it_saves(base_settings: Settings) -> None:
    # no fill: /a prefetched at t10 and hit at t20; /b prefetched at t40 (its 2nd client) and never
    # asked again. Local 100, prefetched 200: net savings -1/6 although the hit ratio is 1/6.
    r = run(hand_trace(ROWS), Setting(window_s=3600, min_clients=2, fill=False), base_settings)
    assert (r.hits, r.bytes_local, r.prefetches, r.bytes_prefetched, r.prefetches_never_hit) == (1, 100, 2, 200, 1)
    assert r.net_savings == pytest.approx(-1 / 6)
    # no prefetch: nothing is ever cached, so no host is steered and the edge never sees a miss
    off = run(hand_trace(ROWS), Setting(window_s=3600, prefetch=False), base_settings)
    assert (off.hits, off.net_savings, off.hosts_steered) == (0, 0.0, 0)


def test_the_window_decides(base_settings: Settings) -> None:
    # /a's two clients 2 h apart: a 1 h window never admits it, a 24 h window does at t=7200
    rows = [(0, "c1", "/a"), (7200, "c2", "/a"), (7300, "c2", "/a")]
    short = run(hand_trace(rows), Setting(window_s=3600, fill=False), base_settings)
    long = run(hand_trace(rows), Setting(window_s=86400, fill=False), base_settings)
    assert (short.prefetches, short.hits) == (0, 0)
    assert (long.prefetches, long.hits, long.net_savings) == (1, 1, 0.0)  # 100 saved - 100 prefetched


def test_quota_evicts_through_the_store_policy(base_settings: Settings) -> None:
    # quota 400 B (4 objects of 100; the per-object cap is a quarter), first access, LRU:
    # a b c d e a b c d e -> every request misses, 10 prefetches, 6 evictions, none ever hit
    rows = [(10.0 * i, f"c{i}", f"/{k}") for i, k in enumerate("abcdeabcde")]
    r = run(hand_trace(rows), Setting(min_clients=1, first_access=True, quota_bytes=400, policy="lru", fill=False),
            base_settings)
    assert (r.hits, r.prefetches, r.evictions, r.prefetches_never_hit) == (0, 10, 6, 10)
    assert r.net_savings == pytest.approx(-1.0)


def test_belady_by_hand() -> None:
    # 2 slots, a b c a b d a: Belady bypasses c (next use never) and keeps a, b: hits a, b, a = 3;
    # LRU hits none on the same trace
    trace = [Req(float(i), k, 1) for i, k in enumerate("abcabda")]
    assert baselines.belady(trace, 2).hits == 3
    assert baselines.store_lru(trace, 2).hits == 0
    assert baselines.ceiling(trace, 2).name.startswith("offline optimum (Belady")
    assert baselines.ceiling(trace, 0).hits == 3  # no quota: every re-request (a, b, a)


def test_bounds_hold_and_lru_matches_libcachesim() -> None:
    rng = random.Random(3)
    keys = [f"k{int(rng.paretovariate(1.1)) % 300}" for _ in range(4000)]
    size = {k: rng.choice((1, 10, 100, 1000)) for k in set(keys)}
    trace = [Req(float(i), k, size[k]) for i, k in enumerate(keys)]
    cap = sum(size.values()) // 10
    ours = baselines.store_lru(trace, cap)
    theirs = baselines.libcachesim_run(trace, cap, "LRU")
    assert (ours.hits, ours.bytes_hit) == (theirs.hits, theirs.bytes_hit)  # the cross-check
    bound = baselines.pfoo_upper(trace, cap)
    assert bound.label == "bound" and bound.bytes_hit >= ours.bytes_hit
    assert bound.bytes_hit >= baselines.libcachesim_run(trace, cap, "S3FIFO").bytes_hit
    unit = [Req(t.ts, t.key, 1) for t in trace]
    opt = baselines.belady(unit, 30)
    assert opt.hits >= baselines.store_lru(unit, 30).hits
    assert opt.hits >= baselines.libcachesim_run(unit, 30, "LRU").hits
    assert baselines.pfoo_upper(unit, 30).hits >= opt.hits


def test_oracle_and_grid_in_processes(base_settings: Settings) -> None:
    # the oracle prefetches /a at its first request (two more follow) and nothing else
    rows = [(0, "c1", "/a"), (10, "c2", "/a"), (20, "c3", "/a"), (30, "c1", "/b")]
    prep = hand_trace(rows)
    oracle = run(prep, Setting(admission="oracle", fill=False), base_settings)
    assert (oracle.prefetches, oracle.hits, oracle.net_savings) == (1, 2, pytest.approx(100 / 400))
    settings = grid(windows=(3600, 86400), min_clients=(2,), fills=(True, False), first_access=True)
    assert len(settings) == 6
    starts: list[float] = []  # each worker's read of the shared trace before its settings
    parallel = run_grid(prep, settings, base_settings, jobs=2, start_s=starts)
    assert 1 <= len(starts) <= 2 and all(t >= 0 for t in starts)
    serial = [run(prep, s, base_settings) for s in settings]
    assert [r.row() | {"elapsed_s": 0} for r in parallel] == [r.row() | {"elapsed_s": 0} for r in serial]
    rows_b, oracles = run_baselines(prep, [0, 200], base_settings)
    assert rows_b[0].name == "no cache" and len(oracles) == 2
    best = Outcome(parallel, rows_b, oracles).recommended()
    assert best is not None and best.net_savings == max(r.net_savings for r in parallel)
    assert "HEATCACHE_HEAT_WINDOW_S=" in Setting(**best.params).apply_command()


def test_shipped_defaults_never_lose_bytes_on_the_named_traces(base_settings: Settings) -> None:
    # the traces bench/replay names, small: the shipped admission/eviction/fill defaults, with no
    # quota and with a tenth of the working set, never cost more uplink bytes than they save
    from replay.gen import make_trace, named_traces

    shipped = base_settings
    for named in named_traces(3000):
        prep = prepare(list(batches(make_trace(named.params), shipped.kafka_partitions)))
        ws = sum(prep.object_size.values())
        for quota in (0, ws // 10):
            s = Setting(window_s=shipped.heat_window_s, min_clients=shipped.heat_min_clients,
                        min_requests=shipped.heat_min_requests, first_access=shipped.heat_first_access,
                        quota_bytes=quota, half_life_s=shipped.cache_half_life_s, fill=shipped.edge_fill)
            r = run(prep, s, shipped)
            assert r.requests == 3000 and r.net_savings >= 0, (named.name, quota, r.net_savings)


def test_a_quota_refusal_in_production_is_left_to_each_settings_quota(base_settings: Settings) -> None:
    """cache-events as `replay --from` reads them: a failed download fails replay's prefetch in
    every setting; an object production's quota refused (``refused``) is decided by each
    setting's own quota: cached with none, refused (not a failed fetch) under a small one."""
    from heatcache import contract
    from heatcache.contract import CacheEvent
    from replay.kafkaio import outcomes_of

    class Msg:
        def __init__(self, ev: CacheEvent) -> None:
            self.raw = contract.encode(ev)

        def value(self) -> bytes:
            return self.raw

    a, b, c = (f"http://h.test/{k}" for k in "abc")
    events = [CacheEvent(a, "failed", size=100, error="over the cap", refused=True),
              CacheEvent(a, "failed", error="not fetched again: over the cap", refused=True),
              CacheEvent(b, "failed", error="404"), CacheEvent(c, "failed", error="reset"),
              CacheEvent(c, "cached", size=100)]
    known, failed = outcomes_of([Msg(e) for e in events] + [type("Bad", (), {"value": lambda self: b"x"})()])
    assert (known, failed) == ({a: 100, c: 100}, {b})
    prep = prepare(list(batches(_trace(ROWS), 1)), 100, known, failed)
    # no quota: /a prefetched at t10 and hit at t20 (as in the first test); /b's prefetch fails
    free = run(prep, Setting(window_s=3600, min_clients=2, fill=False), base_settings)
    assert (free.prefetches, free.hits, free.fetch_failures, free.refused) == (1, 1, 1, 0)
    # 300 B: the per-object cap is 75 B, so /a (100 B) is refused by this quota, and is no failure
    small = run(prep, Setting(window_s=3600, min_clients=2, fill=False, quota_bytes=300), base_settings)
    assert (small.prefetches, small.hits, small.fetch_failures, small.refused) == (0, 0, 1, 1)


def _trace(rows: list[tuple[float, str, str]]) -> Trace:
    """The rows as a trace whose sizes are unknown to the log (sizes from cache-events)."""
    trace = Trace()
    for ts, client, path in rows:
        url = f"http://h.test{path}"
        trace.add(RequestEvent(1_790_000_000.0 + ts, client, "GET", "h.test", path, url, url), 0, 0)
    return trace
