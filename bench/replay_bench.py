"""bench/replay: the replay engine on generated traces (replay.gen, the traces docs/tuning.md
names), in the same run as libcachesim's LRU (C) on the same trace.

1. a 12-setting grid (windows x min clients x quota with/without) over the campus trace, the
   settings in parallel processes: requests/s of each setting (its own CPU time) and the wall
   time of the whole grid;
2. libcachesim's LRU and S3-FIFO (process_trace) on the same requests: requests/s;
3. the shipped defaults on every named trace (no quota and 10 % of the working set): net
   savings, which must not be negative.

Last line: ``replay: ... ratio=<ours / libcachesim LRU requests/s> (reference libcachesim LRU)``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from heatcache.settings import load_settings
from replay import baselines
from replay.engine import Setting, gc_paused, prepare, run
from replay.gen import make_trace, named_traces
from replay.grid import grid, requests_of, run_grid
from replay.trace import batches


def shipped(base: object, quota: int) -> Setting:
    s = base  # the defaults as heatcache.settings ships them
    return Setting(window_s=s.heat_window_s, min_clients=s.heat_min_clients,  # type: ignore[attr-defined]
                   min_requests=s.heat_min_requests, first_access=s.heat_first_access,  # type: ignore[attr-defined]
                   quota_bytes=quota, half_life_s=s.cache_half_life_s, fill=s.edge_fill)  # type: ignore[attr-defined]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="15k requests, smaller checks (under 50 s)")
    ap.add_argument("--requests", type=int, default=0, help="requests in the grid's trace (default 1M)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    n = args.requests or (15_000 if args.quick else 1_000_000)
    with tempfile.TemporaryDirectory() as tmp:
        base = load_settings(state_dir=Path(tmp) / "state")
        t = time.perf_counter()
        campus = named_traces(n)[0]
        with gc_paused():
            prep = prepare(list(batches(make_trace(campus.params), base.kafka_partitions, base.batch_max_events,
                                        base.batch_linger_ms / 1000)))
        fixed = time.perf_counter() - t
        print(f"trace {campus.name}: {n} requests, {len(prep.object_size)} objects "
              f"(generated, batched and prepared in {fixed:.1f} s)", flush=True)
        ws = sum(prep.object_size.values())
        settings = grid(windows=(3600, 6 * 3600, 24 * 3600), min_clients=(2, 3), quotas=(0, ws // 10))
        assert len(settings) == 12
        t = time.perf_counter()
        starts: list[float] = []
        results = run_grid(prep, settings, base, args.jobs, start_s=starts)
        wall = time.perf_counter() - t
        rates = []
        for r in results:
            rate = r.requests / r.elapsed_s
            rates.append(rate)
            print(f"  {r.setting:45s} {rate:9.0f} req/s (CPU)  net savings {r.net_savings:+.3f}  "
                  f"byte hit {r.byte_hit_ratio:.3f}", flush=True)
        cpu = sum(r.elapsed_s for r in results)
        load = os.getloadavg()[0]
        print(f"grid: 12 settings x {n} requests in {wall:.1f} s wall ({args.jobs} processes, load average "
              f"{load:.1f}); {cpu:.1f} s of CPU in all = {cpu / max(1, args.jobs):.1f} s on {args.jobs} idle cores; "
              f"each worker first read the shared trace (copy-on-write) in "
              f"{', '.join(f'{t:.1f}' for t in starts) or '-'} s of CPU (in the wall, not in the settings)", flush=True)

        reqs = requests_of(prep)
        path = os.path.join(tmp, "trace.oracleGeneral")
        baselines.write_oracle_general(reqs, path)
        lcs = {}
        for policy in ("LRU", "S3FIFO"):
            t = time.perf_counter()
            b = baselines.libcachesim_run(reqs, ws // 10, policy, path)
            lcs[policy] = len(reqs) / (time.perf_counter() - t)
            print(f"libcachesim {policy}: {lcs[policy]:.0f} req/s (byte hit {b.byte_hit_ratio:.3f} at 10%)", flush=True)

        worst = 1.0
        check_n = 5_000 if args.quick else 200_000
        for named in named_traces(check_n):
            with gc_paused():
                p = prepare(list(batches(make_trace(named.params), base.kafka_partitions)))
            wsn = sum(p.object_size.values())
            for quota in (0, wsn // 10):
                r = run(p, shipped(base, quota), base)
                worst = min(worst, r.net_savings)
                print(f"shipped defaults on {named.name:10s} quota {'none' if not quota else '10%':4s}: "
                      f"net savings {r.net_savings:+.3f}, byte hit {r.byte_hit_ratio:.3f}, "
                      f"prefetched {r.bytes_prefetched / max(1, r.bytes_requested):.3f} of bytes", flush=True)
    median = statistics.median(rates)
    print(f"replay: {median:.0f} req/s per setting (median of 12, min {min(rates):.0f}), grid of 12 x {n} in "
          f"{wall:.0f} s wall (+{fixed:.0f} s to make the trace) at load {load:.1f} ({cpu:.0f} s CPU), shipped "
          f"defaults worst net savings {worst:+.3f} "
          f"ratio={median / lcs['LRU']:.3f} (reference libcachesim LRU {lcs['LRU']:.0f} req/s)")
    return 0 if worst >= 0 else 1


if __name__ == "__main__":
    sys.exit(main())
