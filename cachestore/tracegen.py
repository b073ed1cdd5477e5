"""A synthetic campus request trace with stated parameters (pure, seeded, no I/O).

Popular objects are drawn from a Zipf(``zipf_alpha``) distribution over ``objects`` ranks; a
fraction ``one_timer_share`` of the requests is for a fresh object that is never asked again (so
well over 30 % of the distinct objects are one-timers, as web and CDN traces show); popularity
drifts: every ``epoch_s`` a fraction ``churn`` of the ranks is handed to new objects (new videos
and releases replace old ones). Sizes are independent of popularity, from a mix of lognormal
classes: small files (pages, images, ~20 KB), packages and documents (~2 MB), large videos
(~150 MB). Timestamps are a Poisson process over ``duration_s``.

``python -m cachestore.tracegen`` prints the comparison table of the eviction policy against LRU
(cachestore/policy.py) at 1 %, 5 % and 10 % of the working set. ``replay`` reuses
:func:`generate`.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from cachestore.policy import Request, compare, working_set_bytes

# (share of objects, median bytes, lognormal sigma)
DEFAULT_SIZE_MIX: tuple[tuple[float, float, float], ...] = (
    (0.70, 20e3, 1.2),  # pages, images, scripts
    (0.25, 2e6, 1.0),  # packages, documents, audio
    (0.05, 150e6, 0.8),  # videos, installers, ISOs
)


@dataclass(frozen=True, slots=True)
class TraceParams:
    requests: int = 200_000
    objects: int = 20_000  # popular (Zipf) ranks
    zipf_alpha: float = 0.8
    one_timer_share: float = 0.25  # of the requests: a fresh object asked only once
    duration_s: float = 7 * 86400.0
    epoch_s: float = 86400.0
    churn: float = 0.2  # share of ranks handed to new objects per epoch
    size_mix: tuple[tuple[float, float, float], ...] = field(default=DEFAULT_SIZE_MIX)
    max_size: int = 2 * 1024**3
    seed: int = 1


def _size(rng: random.Random, mix: Sequence[tuple[float, float, float]], cum: Sequence[float], cap: int) -> int:
    _share, median, sigma = mix[bisect.bisect_left(cum, rng.random() * cum[-1])]
    return max(1, min(cap, int(rng.lognormvariate(math.log(median), sigma))))


def generate(params: TraceParams | None = None) -> list[Request]:
    """The trace, as (ts, key, size) in time order."""
    p = params or TraceParams()
    rng = random.Random(p.seed)
    weights = list(itertools.accumulate(1.0 / (r + 1) ** p.zipf_alpha for r in range(p.objects)))
    cum_mix = list(itertools.accumulate(m[0] for m in p.size_mix))
    serial = itertools.count()
    sizes: dict[str, int] = {}

    def new_object(kind: str) -> str:
        key = f"http://h{rng.randrange(200)}.example/{kind}/{next(serial)}"
        sizes[key] = _size(rng, p.size_mix, cum_mix, p.max_size)
        return key

    ranks = [new_object("p") for _ in range(p.objects)]
    out: list[Request] = []
    ts = 0.0
    rate = p.requests / p.duration_s
    epoch = 0
    for _ in range(p.requests):
        ts += rng.expovariate(rate)
        while ts >= (epoch + 1) * p.epoch_s:  # popularity drift
            epoch += 1
            for r in rng.sample(range(p.objects), int(p.churn * p.objects)):
                ranks[r] = new_object("p")
        if rng.random() < p.one_timer_share:
            key = new_object("o")
        else:
            key = ranks[bisect.bisect_left(weights, rng.random() * weights[-1])]
        out.append(Request(ts, key, sizes[key]))
    return out


def describe(trace: Sequence[Request]) -> dict[str, float]:
    counts = Counter(r.key for r in trace)
    once = sum(1 for n in counts.values() if n == 1)
    return {"requests": len(trace), "objects": len(counts), "one_timer_objects": once / max(1, len(counts)),
            "working_set_bytes": working_set_bytes(trace), "bytes_requested": sum(r.size for r in trace)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="eviction policy vs LRU on a generated trace")
    d0 = TraceParams()
    ap.add_argument("--requests", type=int, default=d0.requests)
    ap.add_argument("--objects", type=int, default=d0.objects)
    ap.add_argument("--alpha", type=float, default=d0.zipf_alpha)
    ap.add_argument("--seed", type=int, default=d0.seed)
    args = ap.parse_args(argv)
    params = TraceParams(requests=args.requests, objects=args.objects, zipf_alpha=args.alpha, seed=args.seed)
    trace = generate(params)
    d = describe(trace)
    print(f"trace: {params}")
    print(f"  {d['requests']:.0f} requests, {d['objects']:.0f} objects, {d['one_timer_objects']:.1%} one-timers, "
          f"working set {d['working_set_bytes'] / 1e9:.1f} GB, requested {d['bytes_requested'] / 1e9:.1f} GB")
    print(f"{'cache':>6} {'policy':>6} {'byte hit':>9} {'obj hit':>8}")
    results = compare(trace)
    ws = working_set_bytes(trace)
    for r in results:
        print(f"{r.capacity / ws:6.0%} {r.policy:>6} {r.byte_hit_ratio:9.4f} {r.hit_ratio:8.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
