"""Replay's cache equals the cache store's: the same stores, hits and outcomes driven through a
real ``cachestore.ObjectStore`` (files on disk, the SQLite catalog, the quota) leave the same
objects cached, evict the same victims in the same order and refuse the same objects."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from cachestore import open_store
from cachestore.catalog import open_catalog
from cachestore.policy import PolicyParams, choose_victims
from cachestore.store import ObjectMeta, StoreRefused
from heatcache.cachekey import key_host
from heatcache.contract import RequestEvent
from heatcache.settings import Settings
from replay.engine import Prepared, Setting, prepare, run
from replay.storepolicy import StorePolicy
from replay.trace import Trace, batches

T0 = 1_790_000_000.0
QUOTA = 60_000


def mixed_trace(n: int = 500, seed: int = 5, failed: frozenset[str] = frozenset()) -> Prepared:
    """Three hosts, 60 objects of 500 B .. 14 KB (one of 20 KB: over the per-object cap of a
    quarter of the quota), 12 clients, skewed popularity, one request every 20 s."""
    rng = random.Random(seed)
    sizes = {f"/o{i}": rng.choice((500, 2_000, 6_000, 14_000)) for i in range(60)}
    sizes["/o7"] = 20_000
    paths = list(sizes)
    weights = [1 / (i + 1) ** 0.9 for i in range(len(paths))]
    trace = Trace()
    for i, path in enumerate(rng.choices(paths, weights=weights, k=n)):
        host = f"h{paths.index(path) % 3}.test"
        url = f"http://{host}{path}"
        trace.add(RequestEvent(T0 + 20.0 * i, f"c{rng.randrange(12)}", "GET", host, path, url, url), sizes[path], 200)
    return prepare(list(batches(trace, partitions=3)), failed_fetches=failed)


def test_replay_cache_contents_equal_the_cache_store(base_settings: Settings, tmp_path: Path) -> None:
    setting = Setting(window_s=3600, min_clients=2, quota_bytes=QUOTA, policy="store", half_life_s=1800.0)
    # production's fetch outcomes (cache-events): the downloads of two admitted keys failed
    first: list[tuple[Any, ...]] = []
    run(mixed_trace(), setting, base_settings, journal=first)
    failed = frozenset([op[1] for op in first if op[0] == "fetch"][:2])
    prep = mixed_trace(failed=failed)
    journal: list[tuple[Any, ...]] = []
    res = run(prep, setting, base_settings, keep_hot=True, journal=journal)
    # the trace exercises every path: prefetches, failed downloads, in-path fills, hits,
    # evictions and a refusal
    assert res.prefetches > 0 and res.fills > 0 and res.hits > 0 and res.evictions > 5 and res.refused > 0
    assert res.fetch_failures >= 2 and len(failed) == 2

    settings = base_settings.model_copy(update={
        "state_dir": tmp_path / "state", "cache_max_bytes": QUOTA, "cache_min_free_bytes": 0,
        "cache_half_life_s": setting.half_life_s})
    catalog = open_catalog(settings.catalog)
    store = open_store(settings, catalog)
    evicted: list[str] = []
    refused: list[str] = []
    expected_evicted = [op[1] for op in journal if op[0] == "evicted"]
    expected_refused = [op[1] for op in journal if op[0] == "refused"]
    try:
        for op in journal:
            if op[0] == "hit":  # the edge's hit counter (it batches them: one per hit here)
                catalog.record_hits({op[1]: (1, op[2])})
            elif op[0] in ("fill", "fetch"):  # the edge's in-path fill or the fetcher's download
                source, key, size, ts, heat = op
                body = tmp_path / "download"
                body.write_bytes(b"x" * size)
                meta = ObjectMeta(url=key, host=key_host(key), heat=heat, source=source)
                try:
                    result = store.commit_file(body, key, meta, expected_size=size, now=ts)
                except StoreRefused:
                    refused.append(key)
                else:
                    evicted += [e.cache_key for e in result.evicted]
        on_disk = {e.cache_key: e.size for e in catalog.cached()}
    finally:
        catalog.close()
    assert evicted == expected_evicted and refused == expected_refused
    assert on_disk == {k: prep.object_size[k] for k in res.cached_at_end}
    assert sum(on_disk.values()) <= QUOTA


@pytest.mark.parametrize("new_weight", [0.5, 2.0])
def test_store_policy_evicts_what_choose_victims_chooses(new_weight: float) -> None:
    # random inserts, hits, heats and evictions: the incremental (lazy) heap agrees with the
    # store's sort over every candidate at each eviction (check=True asserts it inside evict);
    # new_weight 2.0: a first hit lowers the rank (count 1 < 2), the case the lazy heap re-pushes
    rng = random.Random(11)
    policy = StorePolicy(PolicyParams(half_life_s=600.0, new_weight=new_weight), check=True)
    keys = [f"http://h.test/{i}" for i in range(40)]
    now = 0.0
    for _ in range(3000):
        now += rng.random() * 30
        key = rng.choice(keys)
        if key in policy and rng.random() < 0.6:
            policy.access(key, now)
        elif key not in policy:
            size = rng.choice((1, 10, 100, 1000))
            need = policy.used_bytes + size - 5000
            if need > 0:
                for victim in policy.evict(need, now):
                    assert victim not in policy
            policy.insert(key, size, now, heat=rng.choice((0, 0, 2, 5)))
        assert policy.used_bytes == sum(policy.candidate(k).size for k in keys if k in policy)
    cached = [policy.candidate(k) for k in keys if k in policy]
    assert [c.key for c in choose_victims(cached, 10**9, policy.params)] == policy.evict(10**9, now)
