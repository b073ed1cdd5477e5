"""Unit tests of the event-time windows and the distinct-client sketch (streams/windows.py)."""

from __future__ import annotations

import base64
import math
import random

import orjson
import pytest
from HLL import HyperLogLog

from streams.windows import Heat, WindowSpec, sketch_from_state, sketch_state

SPEC = WindowSpec(window_s=100, step_s=10, grace_s=5, client_cap=8, sketch_p=12)


def add(heat: Heat, ts: float, client: str, tls: bool = False, nbytes: int = 0) -> None:
    heat.add(SPEC.pane(ts), client, tls, nbytes, SPEC)


def test_hopping_window_counts_requests_clients_bytes_and_tls() -> None:
    h = Heat()
    add(h, 0, "a", nbytes=10)
    add(h, 15, "a", nbytes=10)
    add(h, 95, "b", tls=True)
    add(h, 105, "c")
    stats = h.stats(SPEC.first_pane(105, 100), 100)  # panes 1..10: ts 10..109
    assert (stats.requests, stats.clients, stats.bytes, stats.tls) == (3, 3, 10, 1)
    assert stats.http_share == pytest.approx(2 / 3)
    assert h.stats(SPEC.first_pane(105, 20), 20).requests == 2  # a shorter rule window: panes 9, 10


def test_tumbling_when_step_equals_window() -> None:
    spec = WindowSpec(window_s=60, step_s=60, grace_s=0)
    h = Heat()
    h.add(spec.pane(59), "a", False, 0, spec)
    h.add(spec.pane(61), "b", False, 0, spec)
    assert h.stats(spec.first_pane(61, 60), 60).clients == 1


def test_exact_clients_are_idempotent_and_expire() -> None:
    h = Heat()
    for _ in range(3):  # the same requests read again (a crash re-count) change no distinct count
        add(h, 1, "a")
        add(h, 2, "b")
    assert h.distinct(0) == 2
    add(h, 50, "a")
    assert h.distinct(SPEC.pane(30)) == 1  # only "a" seen since ts 30
    assert not h.expire(SPEC.pane(40))
    assert h.clients == {"a": 5} and list(h.panes) == [5]
    assert h.expire(SPEC.pane(200))


def test_past_the_cap_a_sketch_within_its_error_bound() -> None:
    h = Heat()
    n = 20_000
    for i in range(n):
        add(h, i % 100, f"client-{i}")
    assert h.clients is None and h.sketches is not None
    est = h.distinct(0)
    sigma = 1.04 / math.sqrt(2**SPEC.sketch_p)
    assert abs(est - n) / n < 4 * sigma  # 4 standard errors: ~6.5% at p=12
    for i in range(n):  # every client again: a sketch does not inflate either
        add(h, i % 100, f"client-{i}")
    assert h.distinct(0) == est
    assert h.stats(0, 100).requests == 2 * n


def test_sketch_switch_keeps_window_semantics() -> None:
    h = Heat()
    for i in range(SPEC.client_cap + 1):
        add(h, 0 if i < 4 else 90, f"c{i}")  # 4 old clients, 5 recent ones
    assert h.sketches is not None
    assert h.distinct(SPEC.pane(90)) == 5
    h.expire(SPEC.pane(105))
    assert h.sketches is None and h.clients == {}  # all sketched clients aged out: exact again


@pytest.mark.parametrize("clients", [3, 50])
def test_durable_form_round_trips(clients: int) -> None:
    h = Heat()
    for i in range(clients):
        add(h, i, f"c{i}", nbytes=i)
    back = Heat.from_json(orjson.loads(orjson.dumps(h.to_json())))
    assert back.stats(0, 100) == h.stats(0, 100)
    add(back, 60, "c0")
    add(h, 60, "c0")
    assert back.distinct(0) == h.distinct(0)


def test_spec_validation() -> None:
    with pytest.raises(ValueError):
        WindowSpec(window_s=100, step_s=30)
    with pytest.raises(ValueError):
        WindowSpec(window_s=100, step_s=10, grace_s=5, expiry_s=50)
    assert WindowSpec(window_s=100, step_s=10, grace_s=5).retention_s == 105


def test_add_many_counts_times_just_before_zero() -> None:
    """ts in [-step, 0) is pane -1: it used to raise IndexError (a -1 sentinel) and drop the client."""
    spec = WindowSpec(window_s=20, step_s=10, client_cap=4)
    for heat in (Heat(), Heat()):
        newest = heat.add_many([(-5.0, "a", "GET"), (-4.0, "b", "TLS"), (3.0, "a", "GET")], 10, 0, spec)
        assert newest == 3.0
        assert heat.panes == {-1: [2, 1, 0], 0: [1, 0, 0]} and heat.clients == {"a": 0, "b": -1}
    single = Heat()
    assert single.add_many([(-5.0, "a", "GET")], 10, 0, spec) == -5.0
    assert single.distinct(-1) == 1


def test_sketch_state_restores_the_identical_sketch() -> None:
    """The packed durable state of a sketch (dense or sparse) gives back a sketch whose pickle
    state, registers and estimate are the original's; a record in the older form (HLL's pickle
    state list) still loads."""
    rnd = random.Random(5)
    kinds = set()
    for trial in range(60):
        sk = HyperLogLog(rnd.choice((4, 6, 10, 12)))
        for _ in range(rnd.randrange(1, 6000)):
            sk.add(f"c{rnd.randrange(10**6)}")
        if trial % 3 == 0:
            sk.cardinality()  # a cached estimate is part of the state too
        kinds.add(sk._get_meta()["is_sparse"])
        args, state = sketch_state(sk)
        assert isinstance(state, str)  # packed
        back = sketch_from_state(*orjson.loads(orjson.dumps([args, state])))
        assert back.__reduce__() == sk.__reduce__()
        assert back.registers() == sk.registers() and back.cardinality() == sk.cardinality()
        _cls, old_args, old_state = sk.__reduce__()
        assert sketch_from_state(list(old_args), old_state).__reduce__() == sk.__reduce__()
    assert kinds == {0, 1}  # both dense and sparse sketches were written
    with pytest.raises(ValueError):
        sketch_from_state([4, 314, 0], base64.b64encode(b"short").decode())
