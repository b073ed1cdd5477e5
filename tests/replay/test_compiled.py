"""The compiled loop (replay/_engine.c) against its Python reference (replay/engine.py's loop and
replay/storepolicy.py): identical results on random traces, every field of every Result, the
admissions and the cache at the end; the same victims in the same order on random operations."""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Any

import pytest

from cachestore.policy import PolicyParams
from heatcache.contract import CacheEvent, RequestEvent
from heatcache.settings import Settings
from replay import _engine
from replay.engine import Prepared, Result, Setting, StreamsAdmission, answer_fills, parse_keys, prepare, run
from replay.storepolicy import StorePolicy
from replay.trace import Trace, batches
from streams.rules import rules_from_settings

T0 = 1_790_000_000.0


def random_trace(seed: int, n: int = 1500, base: Settings | None = None) -> tuple[Prepared, int]:
    """Mixed hosts (ports, https, one never steered), TLS events, HEAD/POST, ranges, statuses
    without a body or unknown, sizes unknown, bursts (batches of several events), events out
    of order (some later than the grace), one key asked by more clients than the exact cap."""
    rng = random.Random(seed)
    hosts = ["a.test", "b.test:8080", "c.test", "skip.test", "d.test"]
    keys = [(h, f"/o{i}") for i in range(80) for h in [hosts[i % len(hosts)]]]
    sizes = {k: rng.choice((300, 2_000, 9_000, 40_000)) for k in keys}
    weights = [1 / (i + 1) ** 0.8 for i in range(len(keys))]
    trace = Trace()
    ts = 0.0
    for _ in range(n):
        ts += rng.choice((0.0, 0.0, 0.05, 3.0, 40.0, 400.0))
        when = T0 + ts - (rng.choice((10.0, 900.0)) if rng.random() < 0.03 else 0.0)
        host, path = rng.choices(keys, weights=weights)[0]
        scheme = "https" if host == "d.test" and rng.random() < 0.5 else "http"
        url = f"{scheme}://{host}{path}"
        client = f"c{rng.randrange(150 if path == '/o0' else 12)}"
        r = rng.random()
        if r < 0.04:
            trace.add(RequestEvent(when, client, "TLS", host, "", f"https://{host}/", f"https://{host}/"), 0, 0)
            continue
        method = "HEAD" if r < 0.07 else "POST" if r < 0.09 else "GET"
        rng_hdr = "bytes=0-99" if rng.random() < 0.05 else ""
        status = rng.choice((200, 200, 200, 200, 206, 304, 404, 0))
        size = sizes[(host, path)] if status in (200, 0) and rng.random() < 0.9 else 0
        if rng_hdr and status == 200:
            size = 100
        trace.add(RequestEvent(when, client, method, host.partition(":")[0], path, url, url, rng_hdr), size, status)
    prep = prepare(list(batches(trace, partitions=3, max_events=rng.choice((1, 5, 50)), linger_s=1.0)),
                   default_size=5_000)
    ws = sum(prep.object_size.values())
    if base is not None:  # production's downloads of some admitted keys failed (cache-events)
        journal: list[tuple[Any, ...]] = []
        run(prep, settings_for(ws)[0], base, journal=journal)
        fetched = sorted({op[1] for op in journal if op[0] == "fetch"})
        prep = prepare(prep.batches, default_size=5_000, failed_fetches=rng.sample(fetched, 3))
    return prep, ws


def settings_for(ws: int) -> list[Setting]:
    q = max(1, ws // 8)
    return [
        Setting(window_s=3600, min_clients=2, quota_bytes=q),
        Setting(window_s=600, min_clients=1, min_requests=2, quota_bytes=q // 3, half_life_s=900.0),
        Setting(window_s=3600, min_clients=3, quota_bytes=0, fill=False),
        Setting(window_s=3600, min_clients=1, first_access=True, quota_bytes=q, prefetch=True),
        Setting(window_s=24 * 3600, min_clients=2, quota_bytes=q, prefetch=False),
        Setting(window_s=3600, quota_bytes=q, admission="oracle"),
    ]


def fields(r: Result) -> dict[str, Any]:
    out = dataclasses.asdict(r)
    out.pop("elapsed_s")
    if math.isnan(out["median_first_hit_s"]):
        out["median_first_hit_s"] = "nan"
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_compiled_loop_equals_the_reference(base_settings: Settings, seed: int) -> None:
    base = base_settings.model_copy(update={"never_steer_hosts": ("skip.test",)})
    prep, ws = random_trace(seed, base=base)
    seen: dict[str, int] = {}
    for setting in settings_for(ws):
        ref = run(prep, setting, base, keep_hot=True, compiled=False)
        got = run(prep, setting, base, keep_hot=True, compiled=True)
        assert fields(got) == fields(ref), setting.name
        for name in ("hits", "prefetches", "fills", "evictions", "refused", "fetch_failures", "prefetches_never_hit"):
            seen[name] = seen.get(name, 0) + getattr(ref, name)
        seen["hosts steered"] = seen.get("hosts steered", 0) + ref.hosts_steered
    assert all(seen.values()), seen  # the traces reach every path of the loop


@pytest.mark.parametrize("seed", [7, 8])
def test_the_compiled_loop_leaves_the_partitions_as_the_reference(base_settings: Settings, seed: int) -> None:
    """Each PartitionHeat's applied offset, late count and watermark (the loop keeps them in C
    between folds), its cache views (the loop does on_cache_event itself) and the admission's
    offsets end as the reference leaves them."""
    base = base_settings.model_copy(update={"never_steer_hosts": ("skip.test",)})
    prep, ws = random_trace(seed, n=900, base=base)  # with failed fetches: views with failures
    setting = Setting(window_s=3600, min_clients=2, quota_bytes=max(1, ws // 8))
    got_ref: list[tuple[Any, ...]] = []
    for compiled in (False, True):
        adm = StreamsAdmission(rules_from_settings(setting.settings(base)))
        run(prep, setting, base, admission=adm, compiled=compiled)
        views = {p: {k: (type(v), dataclasses.astuple(v)) for k, v in ph.cache.items()} for p, ph in adm.parts.items()}
        got_ref.append((dict(adm.offsets), {p: (ph.applied, ph.late, ph.watermark) for p, ph in adm.parts.items()},
                        views))
    assert got_ref[0] == got_ref[1] and any(late for _a, late, _w in got_ref[0][1].values())
    states = {(v[1][0], v[1][2] > 0) for part in got_ref[0][2].values() for v in part.values()}
    assert {("cached", False), ("evicted", False), ("failed", True)} <= states, states


def test_the_events_the_compiled_loop_hands_the_index_are_the_constructors(base_settings: Settings) -> None:
    """The loop makes a kind's first CacheEvent with the constructor and the next ones as its
    copies (kept on the trace for the next runs): each equals the event the constructor makes."""
    prep, ws = random_trace(6, n=800)
    run(prep, Setting(window_s=3600, min_clients=1, quota_bytes=max(1, ws // 10)), base_settings, compiled=True)
    made = [ev for ev in prep.events if ev is not None]
    kinds = {(ev.state, ev.source) for ev in made}
    assert len(made) > 20 and kinds == {("cached", "fill"), ("cached", "fetch"), ("evicted", "")}, kinds
    for i, ev in enumerate(prep.events):
        if ev is None:
            continue
        key, kind = prep.keys[i // 3], i % 3
        want = (CacheEvent(cache_key=key, state="evicted") if kind == 2 else
                CacheEvent(cache_key=key, state="cached", size=prep.object_size[key],
                           source=("fill", "fetch")[kind]))
        assert type(ev) is CacheEvent and ev == want and hash(ev) == hash(want)
        assert dataclasses.asdict(ev) == dataclasses.asdict(want)


def test_fill_answers_asked_before_the_runs_give_the_same_results(base_settings: Settings) -> None:
    """What a grid does before it forks (every fill class asked once): the same results, compiled
    and not, as runs that ask the fill rule themselves."""
    prep, ws = random_trace(5, n=600)
    settings = settings_for(ws)[:2]
    lazy = [fields(run(prep, s, base_settings, keep_hot=True)) for s in settings]
    answer_fills(prep, base_settings.max_object_bytes)
    assert None not in prep.fill_answers[base_settings.max_object_bytes]
    for s, want in zip(settings, lazy, strict=True):
        assert fields(run(prep, s, base_settings, keep_hot=True)) == want
        assert fields(run(prep, s, base_settings, keep_hot=True, compiled=False)) == want


def test_the_engine_picks_the_compiled_loop_for_the_store_policy(base_settings: Settings) -> None:
    prep, ws = random_trace(4, n=300)
    assert fields(run(prep, Setting(quota_bytes=ws // 5), base_settings)) == fields(
        run(prep, Setting(quota_bytes=ws // 5), base_settings, compiled=False))
    with pytest.raises(ValueError):
        run(prep, Setting(policy="lru"), base_settings, compiled=True)  # the baselines stay in Python


@pytest.mark.parametrize("new_weight", [0.5, 2.0])
def test_compiled_store_policy_evicts_the_same_victims(new_weight: float) -> None:
    params = PolicyParams(half_life_s=600.0, new_weight=new_weight)
    ref = StorePolicy(params, check=True)  # check: also asserts choose_victims agrees
    got = _engine.StorePolicy(params.half_life_s, params.new_weight, params.heat_weight, params.size_exponent)
    rng = random.Random(int(new_weight * 10))
    keys = [f"k{i:03d}" for i in range(120)]
    now = 0.0
    for _ in range(6000):
        now += rng.choice((0.0, 1.0, 30.0))  # equal times: ties broken by key
        key = rng.choice(keys)
        op = rng.random()
        if op < 0.35:
            size, heat = rng.choice((100, 100, 700, 5000)), rng.choice((0, 0, 0, 1, 3))
            ref.insert(key, size, now, heat)
            got.insert(key, size, now, heat)
        elif op < 0.75:
            if key in ref:
                ref.access(key, now)
                got.access(key, now)
        elif op < 0.8:
            ref.remove(key)
            got.remove(key)
        else:
            need = rng.choice((1, 500, 4000, 20000))
            assert got.evict(need, now) == ref.evict(need, now)
        assert (got.used_bytes, len(got), key in got) == (ref.used_bytes, len(ref), key in ref)
    assert sorted(k for k in keys if k in got) == sorted(k for k in keys if k in ref)


def test_keys_parsed_before_the_runs_are_the_index_parse_and_give_the_same_results(base_settings: Settings) -> None:
    """What a grid does before it forks (every request's key parsed once for the index's memo):
    the memo holds what CacheIndex itself parses, and the runs' results are unchanged."""
    from dns_redirect.index import CacheIndex
    from dns_redirect.ports import key_port
    from heatcache.cachekey import key_host

    prep, ws = random_trace(9, n=700)
    setting = Setting(window_s=3600, min_clients=1, quota_bytes=max(1, ws // 6))
    lazy = fields(run(prep, setting, base_settings, keep_hot=True))
    by_index = dict(prep.parsed_keys)  # what the run's CacheIndex parsed itself
    prep.parsed_keys.clear()
    parse_keys(prep)
    assert by_index and set(prep.parsed_keys) == set(prep.first_seen) and by_index.items() <= prep.parsed_keys.items()
    assert all(w == (key_host(k), key_port(k)) for k, w in prep.parsed_keys.items())
    assert fields(run(prep, setting, base_settings, keep_hot=True)) == lazy
    assert fields(run(prep, setting, base_settings, keep_hot=True, compiled=False)) == lazy
    assert len(prep.parsed_keys) <= CacheIndex.PARSED_MAX
