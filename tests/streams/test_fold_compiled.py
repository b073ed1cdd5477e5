"""The compiled fold (streams/_fold.c) against its Python reference (streams/heat.py, windows.py).

Both run side by side over the same randomized messages, cache events, re-checks, expiries and
flushes: every FoldResult, every state record of take_dirty and the final state must be equal.
The inputs are made to hit the edges: late events and the grace period, events in one pane and
across panes, the exact -> sketch transition (small client caps), window expiry (back to exact
counting), TLS and non-GET events (host heat only), byte sizes, operator pins and rules files.
"""

from __future__ import annotations

import math
import random

import orjson
import pytest

from heatcache.contract import RequestEvent
from streams import _fold  # imported unconditionally: no skip, the build must work
from streams import heat as heat_mod
from streams.heat import KeyHeat, PartitionHeat, compiled_available
from streams.rules import Backoff, Rule, Rules, _host_matcher, _Thresholds
from streams.windows import Heat, WindowSpec

METHODS = ("GET", "GET", "GET", "HEAD", "TLS", "POST")


def make_rules(rnd: random.Random) -> Rules:
    step = rnd.choice((5, 10))
    spec = WindowSpec(window_s=step * rnd.choice((1, 3, 6)), step_s=step, grace_s=rnd.choice((0, 3, 12, 40)),
                      client_cap=rnd.choice((1, 2, 3, 5, 8)), sketch_p=4)
    backoff = Backoff(base_s=rnd.choice((5.0, 20.0)), max_s=100.0, unanswered_s=rnd.choice((0.0, 30.0)))
    kind = rnd.randrange(3)
    if kind == 0:
        return Rules.simple(spec, min_clients=rnd.choice((1, 2, 3, 6)), min_requests=rnd.choice((1, 3)),
                            backoff=backoff)
    if kind == 1:
        return Rules.simple(spec, first_access=True, backoff=backoff)
    # not plain: an override for one host (the C shortcut on min_clients is off then)
    over = ((_host_matcher("h1.example"), _Thresholds(min_clients=1), "hosts[h1.example]"),)
    return Rules(spec, Rule(spec.window_s, min_clients=3), hosts=over, backoff=backoff)


def make_events(rnd: random.Random, now: float, n: int, keys: list[str], clients: int) -> list[RequestEvent]:
    """Events around ``now`` (near 0, some are in [-step, 0): pane -1, where Heat.add_many used
    to raise IndexError)."""
    out = []
    for _ in range(n):
        key = rnd.choice(keys)
        host = key.split("/")[2]
        r = rnd.random()
        ts = now - rnd.uniform(0, 60) if r < 0.15 else now + rnd.uniform(0, 3)  # some late, some just behind
        ts = round(ts, 3)
        method = rnd.choice(METHODS)
        out.append(RequestEvent(ts, f"c{rnd.randrange(clients)}", method, host, "/x", key + "?q", key))
    return out


def pair(rnd: random.Random) -> tuple[PartitionHeat, PartitionHeat]:
    rules = make_rules(rnd)
    slots = rnd.choice((1, 4))
    host_heat = rnd.random() < 0.8
    return (PartitionHeat(0, rules, slots=slots, host_heat=host_heat, compiled=True),
            PartitionHeat(0, rules, slots=slots, host_heat=host_heat, compiled=False))


def records(out: list[tuple[str, bytes | None]]) -> list[tuple[str, object]]:
    return [(name, None if value is None else orjson.loads(value)) for name, value in out]


def state(ph: PartitionHeat) -> tuple[object, ...]:
    return ({k: h.to_json() for k, h in ph.keys.items()}, {h: x.to_json() for h, x in ph.hosts.items()},
            ph.watermark, ph.applied, ph.late, sorted(ph.dirty_keys), sorted(ph.dirty_hosts),
            sorted(ph.touched_hosts), dict(ph.cache))


def test_compiled_fold_equals_the_reference() -> None:
    assert compiled_available()
    seen: set[str] = set()
    for seed in range(40):
        run_one(seed, seen)
    # the edges were really exercised
    assert {"late", "sketch", "hot", "negative-pane", "expired-key"} <= seen, seen


def run_one(seed: int, seen: set[str]) -> None:
    rnd = random.Random(seed)
    fast, ref = pair(rnd)
    assert fast.compiled and not ref.compiled
    keys = [f"http://h{i % 3}.example/o/{i}" for i in range(rnd.choice((1, 3, 8)))]
    clients = rnd.choice((2, 6, 30))
    sized = rnd.random() < 0.5
    sizes = (lambda k: len(k) * 100) if sized else None
    if rnd.random() < 0.2:
        pins = {keys[0]: "always", keys[-1]: "never"}
        fast.pins = ref.pins = lambda key, _host: pins.get(key, "")
    now = -fast.spec.step_s + 1.0 if seed % 4 == 0 else 1000.0  # some start in pane -1
    for offset in range(120):
        now += rnd.uniform(0, fast.spec.step_s * 0.7)
        if rnd.random() < 0.03:
            now += fast.spec.window_s * 3  # a long gap: panes and keys expire
        events = make_events(rnd, now, rnd.choice((1, 1, 2, 5, 20)), keys, clients)
        got, want = fast.fold(offset, events, sizes), ref.fold(offset, events, sizes)
        assert got == want, f"seed {seed} offset {offset}"
        sketched = {k for k, h in ref.keys.items() if h.clients is None}
        seen.update(("late",) * bool(got.late) + ("hot",) * bool(got.hot) + ("sketch",) * bool(sketched))
        if any(p < 0 for h in ref.keys.values() for p in h.panes):
            seen.add("negative-pane")
        if rnd.random() < 0.15:
            key, st = rnd.choice(keys), rnd.choice(("cached", "failed", "evicted", "purged", "stale"))
            for ph in (fast, ref):
                ph.on_cache_event(key, st, ph.watermark)
        if rnd.random() < 0.1:
            fast.expire()
            ref.expire()
            if ref.expired_keys:
                seen.add("expired-key")
        if rnd.random() < 0.2:
            hosts = rnd.random() < 0.5
            assert records(fast.take_dirty(hosts)) == records(ref.take_dirty(hosts))
        assert state(fast) == state(ref), f"seed {seed} offset {offset}"
        n = rnd.choice((0, 1, 2, 3, 100))
        assert fast.top_keys(n) == ref.top_keys(n)
    assert records(fast.take_dirty()) == records(ref.take_dirty())


def test_top_keys_equals_the_reference() -> None:
    """Many keys, many ties, panes in and out of the window: the same top-n in the same order."""
    rnd = random.Random(3)
    spec = WindowSpec(window_s=30, step_s=10, grace_s=100, client_cap=4, sketch_p=4)
    fast, ref = (PartitionHeat(0, Rules.simple(spec, min_clients=99), compiled=c) for c in (True, False))
    for offset in range(300):
        events = [RequestEvent(float(offset + rnd.randrange(-60, 1)), f"c{rnd.randrange(9)}", "GET", "h", "/", "u",
                               f"k{rnd.randrange(400)}") for _ in range(rnd.randrange(1, 12))]
        fast.fold(offset, events)
        ref.fold(offset, events)
        if offset % 25 == 0:
            for n in (0, 1, 5, 10, 399, 400, 1000):
                assert fast.top_keys(n) == ref.top_keys(n), (offset, n)
    assert len(ref.top_keys(1000)) == len(ref.keys) and ref.top_keys(-1) == fast.top_keys(-1) == []


def test_plain_lists_fold_like_events() -> None:
    """The compiled fold also takes the decoded rows as lists (a faster decode can skip tuples)."""
    spec = WindowSpec(window_s=60, step_s=10, grace_s=5, client_cap=2, sketch_p=4)
    a, b = (PartitionHeat(0, Rules.simple(spec, min_clients=2), compiled=True) for _ in range(2))
    evs = [RequestEvent(100.0 + i, f"c{i % 4}", "GET", "h.example", "/f", "http://h.example/f",
                        "http://h.example/f") for i in range(6)]
    assert a.fold(0, evs) == b.fold(0, [list(e) for e in evs])
    assert state(a) == state(b)


def test_encode_slot_matches_orjson() -> None:
    heat = Heat()
    spec = WindowSpec(window_s=60, step_s=10, client_cap=8)
    for i, client in enumerate(['a"b', "c\\d", "e\nf\x01", "ü€😀", "plain"]):
        heat.add(i, client, i % 2 == 0, 7 * i, spec)
    raw = _fold.encode_slot(["h\t1"], {"h\t1": heat}, None, lambda h: orjson.dumps(h.to_json()), False)
    assert raw == orjson.dumps({"h\t1": heat.to_json()})
    cache: dict[str, bytes] = {}
    sk = Heat()
    for i in range(20):
        sk.add(0, f"c{i}", False, 0, spec)
    assert sk.clients is None  # sketch mode: the fallback encodes it
    raw = _fold.encode_slot(["s"], {"s": sk}, cache, lambda h: orjson.dumps(h.to_json()), False)
    assert raw == orjson.dumps({"s": sk.to_json()}) and cache["s"] == orjson.dumps(sk.to_json())


def test_host_heat_counted_in_bulk_equals_counting_each_message(monkeypatch: pytest.MonkeyPatch) -> None:
    """Host heat is counted over many messages at once (PartitionHeat.apply_hosts, C: fold_hosts):
    the heat, the dirty/touched hosts and the state records are those of counting each message's
    host events at once (late events judged by each message's own watermark), compiled or not,
    also when the pending events cross HOST_BULK_EVENTS."""
    monkeypatch.setattr(heat_mod, "HOST_BULK_EVENTS", 60)
    seen_bulk = 0
    for seed in range(10):
        rnd = random.Random(seed)
        rules = make_rules(rnd)
        # eager (hosts read after every message) and bulk, each compiled and reference
        phs = [PartitionHeat(0, rules, slots=4, compiled=c) for c in (True, True, False, False)]
        keys = [f"http://h{i % 4}.example/o/{i}" for i in range(rnd.choice((3, 9)))]
        now = 1000.0
        for offset in range(150):
            now += rnd.uniform(0, rules.spec.step_s * 0.7)
            events = make_events(rnd, now, rnd.choice((1, 2, 5, 20)), keys, rnd.choice((2, 6, 30)))
            got = [ph.fold(offset, events) for ph in phs]
            assert all(g == got[0] for g in got), f"seed {seed} offset {offset}"
            phs[0].apply_hosts()
            phs[2].apply_hosts()
            seen_bulk = max(seen_bulk, len(phs[1]._host_batches))
            if rnd.random() < 0.05:
                for ph in phs:
                    ph.expire()
            if rnd.random() < 0.1:
                want = records(phs[0].take_dirty(True))
                assert all(records(ph.take_dirty(True)) == want for ph in phs[1:]), f"seed {seed} offset {offset}"
        want_state = state(phs[0])
        assert all(state(ph) == want_state for ph in phs[1:]), f"seed {seed}"
    assert seen_bulk >= 5  # many messages were pending at once


def test_encode_slot_numbers_match_orjson_across_calls() -> None:
    # the encoder keeps the last integer and a cache of float renderings between keys and
    # calls: admission times (new, repeated, colliding, 0.0, -0.0), panes and counts (negative,
    # zero, repeated, large) must still come out as orjson writes them. (Times below 1e-4 or
    # from 1e16 on are written as repr writes them, 1e-07 where orjson writes 1e-7: the same
    # double when read; event times are not there.)
    rnd = random.Random(1617)
    spec = WindowSpec(window_s=60, step_s=10, client_cap=64)
    times = [0.0, -0.0, 1.5, 0.001, 1780000000.123, 4102444800.0] + [rnd.uniform(0, 4e9) for _ in range(40)]
    for _ in range(30):
        heats: dict[str, KeyHeat] = {}
        for k in range(rnd.randrange(1, 40)):
            kh = KeyHeat()
            for _ in range(rnd.randrange(1, 12)):
                kh.add(rnd.choice((-3, 0, 0, 7, 494444, 2**40)), f"c{rnd.randrange(30)}", rnd.random() < 0.3,
                       rnd.choice((0, 1, 10**12)), spec)
            kh.url = f"http://h/{k}"
            kh.admitted = rnd.choice(times) if rnd.random() < 0.8 else rnd.uniform(-1e6, 1e6)
            heats[f"k{k}"] = kh
        raw = _fold.encode_slot(list(heats), heats, {}, lambda h: orjson.dumps(h.to_json()), True)
        assert raw == orjson.dumps({name: kh.to_json() for name, kh in heats.items()})


def test_panes_at_their_bounds_equal_the_reference() -> None:
    # the compiled fold skips ts // step while ts stays within the current pane's bounds: events
    # on, just below and just above pane edges (negative, large, huge ts) give the same panes
    rnd = random.Random(1618)
    for step in (1, 5, 7, 3600):
        spec = WindowSpec(window_s=step * 4, step_s=step, grace_s=10**9, client_cap=3, sketch_p=4)
        fast, ref = (PartitionHeat(0, Rules.simple(spec, min_clients=99), compiled=c) for c in (True, False))
        offset = 0
        for base in (-3.0 * step, 0.0, 1_780_000_000.0, 2.0**52, 1e17):
            edge = math.floor(base / step) * step
            near = [float(edge + k * step) for k in range(-2, 3)]
            tss = [t for e in near for t in (math.nextafter(e, -math.inf), e, math.nextafter(e, math.inf))]
            for _ in range(20):
                batch = sorted(rnd.sample(tss, rnd.randrange(1, len(tss))), reverse=rnd.random() < 0.3)
                events = [RequestEvent(ts, f"c{rnd.randrange(5)}", "GET", "h.example", "/", "u", "k") for ts in batch]
                assert fast.fold(offset, events) == ref.fold(offset, events)
                offset += 1
            assert state(fast) == state(ref), (step, base)
