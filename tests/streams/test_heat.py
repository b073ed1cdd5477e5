"""Unit tests of a partition's heat: folding messages, late events, admissions, recovery."""

from __future__ import annotations

import orjson

from heatcache.contract import RequestEvent
from streams.heat import PartitionHeat, admission_id
from streams.rules import Rules, split_key
from streams.windows import WindowSpec

SPEC = WindowSpec(window_s=100, step_s=10, grace_s=20)
K = "http://example.com/f.iso"


def ev(client: str, ts: float, key: str = K, method: str = "GET") -> RequestEvent:
    host = key.split("/")[2]
    return RequestEvent(ts, client, method, host, "/f.iso?t=1", key + "?t=1", key)


def tls(client: str, ts: float, host: str = "example.com") -> RequestEvent:
    return RequestEvent(ts, client, "TLS", host, "", f"https://{host}/", f"https://{host}/")


def part(min_clients: int = 2) -> PartitionHeat:
    return PartitionHeat(0, Rules.simple(SPEC, min_clients=min_clients))


def test_hot_once_per_admission_with_its_id() -> None:
    p = part()
    assert p.fold(0, [ev("a", 1), ev("a", 2)]).hot == []
    hot = p.fold(1, [ev("b", 5)]).hot
    assert len(hot) == 1
    h = hot[0]
    assert (h.cache_key, h.clients, h.heat, h.ts, h.host, h.reason) == (K, 2, 3, 5, "example.com", "heat")
    assert h.admission == admission_id(K, 5) and h.url == K + "?t=1"
    assert p.fold(2, [ev("c", 6)]).hot == []  # being fetched: not again


def test_offsets_already_folded_are_skipped() -> None:
    p = part()
    p.fold(7, [ev("a", 1)])
    again = p.fold(7, [ev("a", 1)])
    assert again.skipped and p.keys[K].stats(0, 100).requests == 1


def test_a_message_without_events_moves_the_offset_only() -> None:
    # the worker folds an undecodable message as one with no events (then dead-letters it)
    for compiled in (False, True):
        p = PartitionHeat(0, Rules.simple(SPEC, min_clients=2), compiled=compiled)
        p.fold(0, [ev("a", 50)])
        r = p.fold(1, ())
        assert (r.skipped, r.events, r.hot, p.applied, p.watermark) == (False, 0, [], 1, 50)
        assert p.fold(1, ()).skipped
        assert orjson.loads(p.take_dirty()[-1][1] or b"")["o"] == 1


def test_late_within_grace_counted_older_dropped() -> None:
    p = part(min_clients=3)
    p.fold(0, [ev("a", 100)])
    r = p.fold(1, [ev("b", 85), ev("c", 60)])  # 85 within 20 s of grace, 60 is late
    assert r.late == 1 and p.late == 1
    assert p.keys[K].stats(0, 100).clients == 2 and r.hot == []


def test_cache_events_drive_re_emission() -> None:
    p = part(min_clients=1)
    first = p.fold(0, [ev("a", 1)]).hot[0]
    p.on_cache_event(K, "cached", 2)
    assert p.fold(1, [ev("b", 3)]).hot == []
    p.on_cache_event(K, "evicted", 4)
    assert p.fold(2, []).hot == []  # not at once: only a request re-admits it (no refetch livelock)
    again = p.fold(3, [ev("c", 5)]).hot  # still hot at its next request: emitted again, a new admission
    assert [h.reason for h in again] == ["refetch-evicted"] and again[0].admission != first.admission


def test_host_heat_counts_http_and_tls() -> None:
    p = part()
    p.fold(0, [ev("a", 1), ev("b", 2), tls("c", 3), tls("a", 4)])
    stats = p.host_stats("example.com")
    assert (stats.requests, stats.tls, stats.clients) == (4, 2, 3)
    assert stats.http_share == 0.5
    assert set(p.keys) == {K}  # TLS is host heat only, never a key to fetch


def test_durable_records_restore_the_same_state() -> None:
    p = part(min_clients=3)
    p.fold(0, [ev("a", 1), ev("b", 2), tls("c", 3)])
    store = dict(p.take_dirty())
    assert p.take_dirty() == [("m:0", p.meta_json())]  # nothing dirty left but the meta record
    q = PartitionHeat(0, Rules.simple(SPEC, min_clients=3), load=store.get)
    q.restore_meta(store["m:0"])
    assert q.applied == 0 and q.watermark == 3
    assert q.fold(0, [ev("a", 1)]).skipped  # a re-read of the folded message counts nothing
    hot = q.fold(1, [ev("c", 4)]).hot  # the third client crosses exactly here
    assert [h.clients for h in hot] == [3]


def test_expiry_drops_old_keys_and_empties_their_slot() -> None:
    p = PartitionHeat(0, Rules.simple(SPEC), slots=1024)
    other = "http://example.com/other"
    assert p.slot_of(K) != p.slot_of(other)
    p.fold(0, [ev("a", 1)])
    p.take_dirty()
    p.fold(1, [ev("b", 500, key=other)])
    p.expire()
    assert K not in p.keys
    recs = dict(p.take_dirty())
    assert recs[p.key_record(p.slot_of(K))] is None  # a tombstone: the slot is empty now
    assert other in orjson.loads(recs[p.key_record(p.slot_of(other))] or b"{}")


def test_one_record_per_changed_slot_not_per_key() -> None:
    p = PartitionHeat(0, Rules.simple(SPEC), slots=4)
    p.fold(0, [ev("a", 1, key=f"http://example.com/k{i}") for i in range(100)])
    recs = p.take_dirty(hosts=False)
    assert len(recs) == 5  # 4 slots + the meta record
    q = PartitionHeat(0, Rules.simple(SPEC), load=dict(recs).get, slots=4)
    assert all(q.key(f"http://example.com/k{i}").stats(0, 100).requests == 1 for i in range(100))


def test_host_heat_off_admits_the_same_and_keeps_no_host_state() -> None:
    # replay folds with host_heat=False (host heat is reported, never admitted on): same HotUrls,
    # same watermark and late counts, one- and many-event messages alike
    import random

    rng = random.Random(3)
    keys = [f"http://h{i % 3}.test/{i}" for i in range(12)]
    msgs = [[ev(f"c{rng.randrange(6)}", 1000 + t * 7 + j * 3 - rng.randrange(30), rng.choice(keys),
                rng.choice(("GET", "GET", "HEAD", "POST", "TLS"))) for j in range(rng.choice((1, 1, 3)))]
            for t in range(300)]
    on = PartitionHeat(0, Rules.simple(SPEC, min_clients=2))
    off = PartitionHeat(0, Rules.simple(SPEC, min_clients=2), host_heat=False)
    for offset, msg in enumerate(msgs):
        a, b = on.fold(offset, msg), off.fold(offset, msg)
        assert a.hot == b.hot and a.late == b.late
        for h in a.hot:
            on.on_cache_event(h.cache_key, "evicted", on.watermark)
            off.on_cache_event(h.cache_key, "evicted", off.watermark)
    assert on.watermark == off.watermark and on.hosts and not off.hosts and not off.dirty_hosts


def test_plain_rules_skip_key_parsing_with_the_same_rule() -> None:
    plain = Rules.simple(SPEC, min_clients=3)
    assert plain.rule_for_key(K) == plain.rule_for(*split_key(K)) == plain.default


def test_far_future_events_are_refused_and_do_not_move_the_watermark() -> None:
    spec = WindowSpec(window_s=100, step_s=10, grace_s=20, max_ahead_s=60)
    p = PartitionHeat(0, Rules.simple(spec, min_clients=2))
    p.fold(0, [ev("a", 1000)], now=1000.5)
    r = p.fold(1, [ev("b", 1010), ev("x", 99_999)], now=1011)  # one event from a wrong clock
    assert (r.future, r.events, p.future) == (1, 1, 1)
    assert "ahead of the stream's watermark" in r.future_reason
    assert p.watermark == 1010 and len(r.hot) == 1  # a and b count; the window did not jump
    r = p.fold(2, [ev("c", 1020)], now=1021)
    assert (r.future, r.late) == (0, 0)  # later events are not late
    # a quiet partition: the clock moved on, so an event 2 h after the last one is fine
    assert p.fold(3, [ev("d", 8220)], now=8221).future == 0
    # no clock (replay of a log) or off: anything goes
    assert p.fold(4, [ev("e", 99_999)]).future == 0
    assert part().fold(0, [ev("a", 5), ev("b", 99_999)], now=5).future == 0


def test_an_unanswered_admission_is_admitted_again_after_the_timeout() -> None:
    from streams.rules import Backoff

    rules = Rules.simple(WindowSpec(window_s=1000, step_s=100, grace_s=20), min_clients=2,
                         backoff=Backoff(unanswered_s=300))
    p = PartitionHeat(0, rules)
    first = p.fold(0, [ev("a", 10), ev("b", 20)]).hot
    assert len(first) == 1
    assert p.fold(1, [ev("c", 200)]).hot == []  # no cache event yet, within the timeout: being fetched
    again = p.fold(2, [ev("d", 330)]).hot  # 310 s after the admission, still no answer: admitted again
    assert len(again) == 1 and again[0].admission != first[0].admission and again[0].ts == 330
    p.on_cache_event(K, "cached", p.watermark)
    assert p.fold(3, [ev("e", 900)]).hot == []  # answered (cached): never again


def test_without_a_loader_the_state_records_are_the_same() -> None:
    # no loader (replay): new keys skip the slot bookkeeping and the slots are rebuilt when the
    # records are taken; the records must be those of a partition that kept the slots all along
    spec = WindowSpec(window_s=20, step_s=10, grace_s=5, client_cap=3, sketch_p=4)
    for compiled in (True, False):
        bare = PartitionHeat(0, Rules.simple(spec, min_clients=2), slots=4, compiled=compiled)
        kept = PartitionHeat(0, Rules.simple(spec, min_clients=2), slots=4, load=lambda _k: None, compiled=compiled)
        expired = 0
        for offset in range(60):
            t = 100.0 + offset * 2 + (100 if offset >= 30 else 0)  # a gap: keys expire
            events = [RequestEvent(t, f"c{(offset * 7 + i) % 5}", "GET", "h", "/", "u", f"k{(offset + i * 3) % 11}")
                      for i in range(offset % 4 + 1)]
            assert bare.fold(offset, events) == kept.fold(offset, events)
            if offset % 9 == 4:
                bare.expire()
                kept.expire()
                assert bare.expired_keys == kept.expired_keys
                expired += len(kept.expired_keys)
            if offset % 13 == 6:
                got, want = bare.take_dirty(), kept.take_dirty()
                assert [(k, v and orjson.loads(v)) for k, v in got] == [(k, v and orjson.loads(v)) for k, v in want]
        assert expired > 0
        got, want = dict(bare.take_dirty()), dict(kept.take_dirty())
        assert {k: v and orjson.loads(v) for k, v in got.items()} == {k: v and orjson.loads(v) for k, v in want.items()}
