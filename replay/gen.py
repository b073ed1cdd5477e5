"""Generated traces for tuning and benchmarks: cachestore.tracegen's objects and sizes (Zipf
popularity, drift, one-timers, mixed sizes) plus the clients asking (many, some much busier
than others), as a replay Trace. Pure and seeded."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from cachestore.tracegen import TraceParams, generate
from heatcache.contract import RequestEvent
from replay.engine import gc_paused
from replay.trace import Trace

T0 = 1_790_000_000.0


@dataclass(frozen=True, slots=True)
class Named:
    name: str
    params: TraceParams
    clients: int = 5000
    about: str = ""


def named_traces(requests: int = 200_000, seed: int = 1) -> list[Named]:
    """The traces bench/replay and docs/tuning.md name (shipped defaults must not lose on any)."""
    base = TraceParams(requests=requests, objects=max(1000, requests // 10), seed=seed)
    return [
        Named("campus", base, about="Zipf 0.8, 25% one-timer requests, mixed sizes, 20%/day drift, 7 days"),
        Named("one-timers", replace(base, one_timer_share=0.7), about="70% of requests for objects asked once"),
        Named("skewed", replace(base, zipf_alpha=1.1, one_timer_share=0.15),
              about="a few very hot objects (Zipf 1.1), 15% one-timers"),
        Named("flat", replace(base, zipf_alpha=0.5, churn=0.5),
              about="long flat tail (Zipf 0.5), 50%/day drift: little reuse"),
    ]


def make_trace(params: TraceParams, clients: int = 5000, seed: int = 1) -> Trace:
    """The requests of ``params`` with a client each (Zipf-ish activity: busy and quiet users)."""
    with gc_paused():  # millions of tuples and strings, no cycles
        return _make_trace(params, clients, seed)


def _make_trace(params: TraceParams, clients: int, seed: int) -> Trace:
    rng = random.Random(seed * 7919 + 1)
    weights = [1.0 / (i + 1) ** 0.6 for i in range(clients)]
    names = [f"c{i:05d}" for i in range(clients)]
    who = rng.choices(names, weights=weights, k=params.requests)
    trace = Trace()
    new = tuple.__new__
    for (ts, key, size), client in zip(generate(params), who, strict=True):
        host = key.split("/")[2]
        path = key[len("http://") + len(host):]
        trace.add(new(RequestEvent, (T0 + ts, client, "GET", host, path, key, key, "", "")), size, 200)
    trace.lines = len(trace)
    return trace
