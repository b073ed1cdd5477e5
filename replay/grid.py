"""A grid of settings over one trace, in parallel processes, plus the baselines at each cache size."""

from __future__ import annotations

import gc
import itertools
import multiprocessing
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from heatcache.settings import Settings
from replay import baselines
from replay.baselines import Baseline, Req
from replay.engine import Prepared, Result, Setting, answer_fills, parse_keys, run

# What a forked worker reads: the prepared trace is handed over by fork (copy-on-write), not
# pickled once per setting. Set only by run_grid, right before the pool starts.
_SHARED: dict[str, Any] = {}


def grid(windows: Sequence[int] = (3600, 6 * 3600, 24 * 3600), min_clients: Sequence[int] = (2, 3),
         quotas: Sequence[int] = (0,), policies: Sequence[str] = ("store",), fills: Sequence[bool] = (True,),
         prefetches: Sequence[bool] = (True,), first_access: bool = False, half_life_s: float = 4 * 3600.0
         ) -> list[Setting]:
    """Every combination of the knobs (``first_access`` adds the fetch-on-first-access rule)."""
    out = [Setting(window_s=w, min_clients=c, quota_bytes=q, policy=p, fill=f, prefetch=pf, half_life_s=half_life_s)
           for w, c, q, p, f, pf in itertools.product(windows, min_clients, quotas, policies, fills, prefetches)]
    if first_access:
        out += [Setting(window_s=windows[0], min_clients=1, first_access=True, quota_bytes=q, policy=p, fill=f,
                        prefetch=True, half_life_s=half_life_s)
                for q, p, f in itertools.product(quotas, policies, fills)]
    return out


def _run_one(setting: Setting) -> Result:
    return run(_SHARED["prep"], setting, _SHARED["base"])


def touch_shared(prep: Prepared) -> None:
    """Read every object of the trace a run reads once (which writes its reference count, so a
    forked worker copies the page holding it now): a worker's first setting otherwise paid the
    copy of the whole shared trace (~330k pages for the 1M campus trace, 1.4-1.7 s of system
    time with two workers at once, a sixth of that setting) and the next ones did not."""
    for b in prep.batches:
        for ev in b.events:
            for _f in ev:
                pass
        for _n in b.sizes or ():
            pass
    for rows in prep.rows:
        for row in rows:
            for _f in row:
                pass
    for d in (prep.object_size, prep.host_of, prep.first_seen, prep.key_ids, prep.parsed_keys):
        for _k, _v in d.items():
            pass


def _start_worker(times: Any) -> None:
    started = time.process_time()
    touch_shared(_SHARED["prep"])
    times.put(time.process_time() - started)


def run_grid(prep: Prepared, settings: Sequence[Setting], base: Settings, jobs: int = 0,
             start_s: list[float] | None = None) -> list[Result]:
    """Each setting in its own process (``jobs`` at once; 0 = one per CPU), results in order.

    Each worker first reads the whole shared trace (:func:`touch_shared`), so its settings'
    figures are their own work; ``start_s``, when given, receives each worker's CPU time for
    that (it is in the grid's wall time, not in any setting's ``elapsed_s``)."""
    jobs = jobs or os.cpu_count() or 1
    if jobs <= 1 or len(settings) <= 1:
        return [run(prep, s, base) for s in settings]
    for max_fill in {s.settings(base).max_object_bytes for s in settings if s.fill}:
        answer_fills(prep, max_fill)  # once here, not once per worker
    parse_keys(prep)  # the same
    _SHARED.update(prep=prep, base=base)
    # the trace's objects out of the collector's reach: a collection in a worker would walk (and
    # so copy, page by page) all of the parent's memory it shares by fork
    gc.freeze()
    try:
        ctx = multiprocessing.get_context("fork")
        times = ctx.SimpleQueue()
        with ProcessPoolExecutor(max_workers=min(jobs, len(settings)), mp_context=ctx, initializer=_start_worker,
                                 initargs=(times,)) as pool:
            results = list(pool.map(_run_one, settings))
        while not times.empty():
            got = times.get()
            if start_s is not None:
                start_s.append(got)
        return results
    finally:
        gc.unfreeze()
        _SHARED.clear()


def requests_of(prep: Prepared) -> list[Req]:
    """The trace as (ts, key, bytes) for the in-path baselines (host-level TLS events left out)."""
    out = []
    size = prep.object_size
    for b in prep.batches:
        for ev in b.events:
            if ev.method != "TLS":
                out.append(Req(ev.ts, ev.cache_key, size[ev.cache_key]))
    out.sort(key=lambda r: r.ts)
    return out


@dataclass
class Outcome:
    """Everything one replay produced: the grid's results and the baselines per cache size."""

    results: list[Result]
    baselines: list[Baseline] = field(default_factory=list)
    oracle: list[Result] = field(default_factory=list)
    trace: dict[str, Any] = field(default_factory=dict)  # what was replayed (source, span, counts)

    def recommended(self) -> Result | None:
        """The applicable setting with the highest net savings (ties: byte hit ratio, then fewer
        bytes prefetched)."""
        ok = [r for r in self.results if Setting(**r.params).applicable]
        if not ok:
            return None
        return max(ok, key=lambda r: (round(r.net_savings, 6), round(r.byte_hit_ratio, 6), -r.bytes_prefetched))


def run_baselines(prep: Prepared, quotas: Sequence[int], base: Settings, with_libcachesim: bool = True,
                  oracle: bool = True) -> tuple[list[Baseline], list[Result]]:
    """No cache, in-path LRU/S3-FIFO, the offline ceiling and the oracle prefetcher per quota."""
    reqs = requests_of(prep)
    total = sum(r.size for r in reqs)
    out = [Baseline("no cache", 0, len(reqs), 0, total, 0)]
    oracles: list[Result] = []
    for q in quotas:
        cap = q if q > 0 else max(1, sum(prep.object_size.values()))
        out.append(replace(baselines.store_lru(reqs, cap), capacity=q))
        if with_libcachesim and baselines.libcachesim_available():
            for policy in ("LRU", "S3FIFO"):
                out.append(replace(baselines.libcachesim_run(reqs, cap, policy), capacity=q))
        out.append(baselines.ceiling(reqs, q))
        if oracle:
            oracles.append(run(prep, Setting(quota_bytes=q, admission="oracle", policy="store"), base))
    return out, oracles
