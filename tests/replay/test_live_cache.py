"""Integration: replay's cache decisions equal what the live fetcher and edge do with the same
recorded traffic.

A small trace is recorded into `requests` (as `heatcache trace import` does) and replayed from
the topic. Then the live half runs the same traffic, in the same order, through the real parts:
the real fetcher (aria2c, pre-flight, ``ObjectStore`` with the byte quota, SQLite catalog,
acknowledged cache-events on the broker) downloads each key replay admitted, and the real edge
(its index following `cache-events`, hits from disk, misses passed through to the origin and
stored in-path) answers each request whose host the index steers. After every step the live
catalog must hold exactly what replay's cache holds; at the end the fetches, fills, hits,
evictions and refusals are the same. One hot file is not on the origin (404): each of its
admissions is one CacheEvent(failed) from the live fetcher where replay, told of the failure,
fails the prefetch; one is over the per-object cap: the live fetcher announces it failed and
``refused`` (the quota's decision, with its size), which replay makes itself. What `heatcache
replay --from` reads back from the live cache-events (replay.kafkaio.fetch_outcomes) replays to
the same decisions and the same counts.

What the live half does not run, and why the result is still the same:
- the streams worker: the HotUrls come from replay's fold (tests/replay/test_live.py shows
  the worker emits exactly those);
- the DNS server: "the client goes to the edge" is the index's ``is_steered``, the rule the
  DNS answers with (no overrides, every port served);
- clocks: the live store ranks by wall-clock time (when a download finished, when a hit was
  booked), replay by event time. The steps run in event-time order, so both clocks order the
  same way, and a half-life far longer than the test makes the rank depend on that order, not
  on the size of the gaps (what differs inherently: a download's duration, not a decision);
- the edge books hits to the catalog in batches (``HIT_FLUSH_S``); the test flushes after each
  hit, so a store ranks with every earlier hit counted, as replay does.
"""

from __future__ import annotations

import asyncio
import functools
import http.client
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from pydantic import SecretStr

from cachestore.catalog import open_catalog
from dns_redirect.edge import Edge
from dns_redirect.index import CacheEventsFollower, CacheIndex
from fetcher.app import Fetcher
from heatcache import contract
from heatcache.cachekey import KeyRules, cache_key, key_host
from heatcache.contract import CacheEvent, HotUrl, RequestEvent
from heatcache.kafkautil import client_config, read_topic
from heatcache.lab import NODE_IP, ORIGIN_IP, Origin, make_sample_files, shared_port
from heatcache.netutil import port_is_free
from heatcache.services.aria2 import Aria2Daemon
from heatcache.settings import Settings
from replay.engine import Setting, StreamsAdmission, prepare, run
from replay.kafkaio import fetch_outcomes, publish_trace, read_range
from replay.trace import Trace
from streams.heat import admission_id
from streams.rules import rules_from_settings
from tests.faults.stackproc import wait_for
from tests.fetcher.test_app import running
from tests.loopthread import on_loop_thread

T0 = 1_790_000_000.0
QUOTA = 24_000  # the per-object cap is a quarter of it: 6000 bytes
HALF_LIFE = 1e12  # see the module doc: the rank follows the order of events, not their gaps
DEADLINE = 30.0
REQUESTS = 110
# the origins (hosts): a host is steered once one of its objects is cached, and prefetches are
# what brings a host in (after that the edge fills its misses), so there are several
ORIGINS = (ORIGIN_IP, "127.0.0.4", "127.0.0.5", "127.0.0.6", "127.0.0.7")
GONE = "gone.bin"  # requested, hot, but not on the origin: its prefetch fails (404)


class Recording(StreamsAdmission):
    """streams' admission as replay runs it, remembering what each message admitted."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.per_message: list[list[tuple[str, float, int]]] = []

    def fold(self, partition: int, events: Any) -> list[tuple[str, float, int]]:
        out = super().fold(partition, events)
        self.per_message.append(list(out))
        return out


def small_trace(port: int, files: dict[str, bytes]) -> Trace:
    """Skewed popularity over the files and GONE (logged as 404: the origin has no such file),
    each on one of the origins (hosts), 8 clients, a request every 30 s."""
    rng = random.Random(19)
    names = sorted([*files, GONE])
    weights = [1 / (i + 1) ** 0.8 for i in range(len(names))]
    rules = KeyRules.load()
    trace = Trace()
    for i, name in enumerate(rng.choices(names, weights=weights, k=REQUESTS)):
        path = "/" + name
        authority = f"{ORIGINS[names.index(name) % len(ORIGINS)]}:{port}"
        key = cache_key(authority, path, rules)
        ev = RequestEvent(T0 + 30.0 * i, f"c{rng.randrange(8)}", "GET", authority, path, key, key)
        trace.add(ev, *((len(files[name]), 200) if name in files else (0, 404)))
    return trace


def wait_until(what: str, cond: Callable[[], bool]) -> None:
    wait_for(cond, DEADLINE, what, poll=0.02)  # a step of the live half takes milliseconds


def wait_for_more(what: str, count: Callable[[], int], before: int) -> None:
    wait_until(what, lambda: count() > before)


def fetches_done(fetcher: Fetcher) -> int:
    """Hot URLs answered (cached or failed) once their job is gone: its cache-events are
    acknowledged, so the next hot URL of the key is a new job, not joined to this one."""
    return fetcher.counters["fetched"] + fetcher.counters["failed"] if not fetcher.jobs else -1



def on_loop(loop: asyncio.AbstractEventLoop, fn: Callable[[], Any]) -> Any:
    async def call() -> Any:
        return fn()
    return asyncio.run_coroutine_threadsafe(call(), loop).result(10)


@pytest.mark.integration
def test_live_fetcher_and_edge_reach_replays_cache(kafka_settings: Settings, aria2: Aria2Daemon,
                                                    tmp_path: Path) -> None:
    port = shared_port()
    assert all(port_is_free(port, address) for address in ORIGINS)
    rng = random.Random(7)
    sizes = {f"o{i:02d}.bin": rng.choice((700, 1500, 3000, 5500)) for i in range(18)}
    sizes["o03.bin"] = 9000  # over the per-object cap: refused by the store (and by replay)
    files = make_sample_files(tmp_path / "www", sizes)
    settings = kafka_settings.model_copy(update={
        "aria2_rpc_port": aria2.port, "aria2_secret": SecretStr("s3cret"), "allow_private_origins": True,
        "upstream_dns": ("127.0.0.1:9",), "fetch_timeout_s": 30.0, "fetch_retries": 0,
        "node_address": NODE_IP, "outbound_address": NODE_IP, "edge_host": NODE_IP, "edge_port": port,
        "cache_max_bytes": QUOTA, "cache_min_free_bytes": 0, "cache_half_life_s": HALF_LIFE, "edge_fill": True})
    trace = small_trace(port, files)
    requests_topic = settings.topic(contract.REQUESTS)
    report = publish_trace(trace, settings.kafka_bootstrap, requests_topic, max_events=1, linger_s=0.0,
                           settings=settings)
    assert report.errors == 0 and report.events == len(trace)

    # -- replay, from the recorded topic
    batches = read_range(settings.kafka_bootstrap, requests_topic, T0, None, settings=settings)
    # the download of GONE fails in production (checked below: the live fetcher's cache-events say so)
    gone_key = next(ev.cache_key for ev in trace.events if ev.path == "/" + GONE)
    prep = prepare(batches, failed_fetches={gone_key})
    setting = Setting(window_s=3600, min_clients=2, quota_bytes=QUOTA, policy="store", half_life_s=HALF_LIFE)
    admission = Recording(rules_from_settings(setting.settings(settings)))
    journal: list[tuple[Any, ...]] = []
    res = run(prep, setting, settings, keep_hot=True, admission=admission, journal=journal)
    assert res.prefetches >= 3 and res.fills >= 3 and res.hits >= 10 and res.evictions >= 3 and res.refused >= 1
    assert res.fetch_failures >= 1
    # replay's cache after each request and each admission, in the engine's order
    expected: list[frozenset[str]] = []
    state: set[str] = set()
    for i, op in enumerate(journal):
        if op[0] in ("fill", "fetch"):
            refused = i + 1 < len(journal) and journal[i + 1] == ("refused", op[1])
            if not refused:
                state.add(op[1])
        elif op[0] == "evicted":
            state.discard(op[1])
        expected.append(frozenset(state))

    # -- live: the fetcher and the edge on the same traffic
    origins = [Origin(tmp_path / "www", address, port).start() for address in ORIGINS]
    catalog = open_catalog(settings.catalog)
    index = CacheIndex()
    prod = Producer({"bootstrap.servers": settings.kafka_bootstrap, **client_config(settings)})
    edge = Edge(settings, index, KeyRules.load(), catalog, producer=prod, hit_flush_s=3600)  # flushed by hand
    live_hits = 0
    diverged: list[str] = []
    step = -1  # the journal op the live run has reached

    def cached_in_catalog() -> frozenset[str]:
        return frozenset(e.cache_key for e in catalog.cached())

    def check(after: str) -> None:
        # the live cache (catalog) against replay's at the same point of the journal
        nonlocal step
        want = expected[step]
        got = cached_in_catalog()
        if got != want and not diverged:
            diverged.append(f"after {after} (journal op {step}): live has {sorted(got - want)} more, "
                            f"{sorted(want - got)} fewer")

    try:
        with on_loop_thread(lambda: edge.start(NODE_IP, port), edge.stop, stop_timeout=10) as loop:
            follower = CacheEventsFollower(settings.kafka_bootstrap, settings.topic(contract.CACHE_EVENTS), index,
                                           loop, config=client_config(settings))
            follower.start()
            assert follower.wait_ready(30)

            def fill_decisions() -> int:
                return (edge.counters["fill.stored"] + edge.counters["fill.skipped.size"]
                        + edge.counters["fill.skipped.status"])

            def index_matches_catalog() -> bool:
                return bool(on_loop(loop, lambda: frozenset(index.objects)) == cached_in_catalog())

            with running(settings) as fetcher:
                for batch, admitted in zip(prep.batches, admission.per_message, strict=True):
                    for ev in batch.events:
                        if not on_loop(loop, functools.partial(index.is_steered, key_host(ev.cache_key))):
                            continue  # the DNS answers it normally: the client goes to the origin
                        hits_before = edge.counters["hits"]
                        decided_before = fill_decisions()
                        conn = http.client.HTTPConnection(NODE_IP, port, timeout=10)
                        try:
                            conn.request("GET", ev.path, headers={"Host": ev.host})
                            resp = conn.getresponse()
                            body = resp.read()
                        finally:
                            conn.close()
                        if ev.path == "/" + GONE:  # passed through, the origin's 404 not stored: no op in replay
                            assert resp.status == 404 and edge.counters["hits"] == hits_before
                            wait_for_more("the edge's fill decision", fill_decisions, decided_before)
                            check(f"miss of {ev.cache_key}")
                            continue
                        assert resp.status == 200 and body == files[ev.path[1:]]
                        if edge.counters["hits"] > hits_before:  # served from the cache
                            live_hits += 1
                            asyncio.run_coroutine_threadsafe(edge.flush_hits(), loop).result(10)
                            step = _next(journal, step, "hit")
                            check(f"hit of {ev.cache_key}")
                        else:  # passed through: stored in-path, or refused (over the per-object cap)
                            wait_for_more("the edge's fill", fill_decisions, decided_before)
                            step = _end_of_store(journal, _next(journal, step, "fill"))
                            check(f"miss of {ev.cache_key}")
                            wait_until("the index to follow the edge's fill", index_matches_catalog)
                    for key, ts, clients in admitted:
                        if on_loop(loop, functools.partial(index.objects.__contains__, key)):
                            continue  # cached already: the fetcher would find it in its catalog
                        done_before = fetcher.counters["fetched"] + fetcher.counters["failed"]
                        hot = HotUrl(cache_key=key, url=key, host=key_host(key), heat=clients, clients=clients,
                                     window_s=3600, ts=ts, reason="replay", admission=admission_id(key, ts))
                        prod.produce(settings.topic(contract.HOT_URLS), key=key.encode(), value=contract.encode(hot),
                                     partition=0)
                        assert prod.flush(10) == 0
                        wait_for_more(f"the fetcher to finish {key}", functools.partial(fetches_done, fetcher),
                                      done_before)
                        if key == gone_key:
                            step = _next(journal, step, "fetch-failed")
                        else:
                            step = _end_of_store(journal, _next(journal, step, "fetch"))
                        check(f"fetch of {key}")
                        wait_until("the index to follow the fetcher's cache-events", index_matches_catalog)
                live_fetched = fetcher.counters["fetched"]
            follower.stop()
            follower.join(10)
    finally:
        prod.flush(10)
        edge.producer = None
        del prod  # no client left behind the session's broker (it would log connect failures)
        catalog.close()
        for origin in origins:
            origin.stop()
    assert not diverged, diverged[0]
    assert live_hits == res.hits
    assert edge.counters["fill.stored"] == res.fills
    assert live_fetched == res.prefetches
    # each admission of GONE: one CacheEvent(failed) from the fetcher (the download, then its back-off)
    events_topic = settings.topic(contract.CACHE_EVENTS)
    gone_events = [contract.decode(m.value(), CacheEvent).state
                   for m in read_topic(settings.kafka_bootstrap, events_topic, settings=settings)
                   if m.key() == gone_key.encode()]
    assert gone_events == ["failed"] * res.fetch_failures
    assert cached_in_catalog_at_end(settings) == set(res.cached_at_end)
    # the object over the per-object cap: failed and refused (its pre-flight size on the first
    # event; later admissions answered from the back-off are marked refused too)
    over_cap = next(ev.cache_key for ev in trace.events if ev.path == "/o03.bin")
    over_events = [contract.decode(m.value(), CacheEvent)
                   for m in read_topic(settings.kafka_bootstrap, events_topic, settings=settings)
                   if m.key() == over_cap.encode()]
    assert over_events and all(e.state == "failed" and e.refused for e in over_events), over_events
    assert over_events[0].size == sizes["o03.bin"]
    # replay's view of production: what `heatcache replay --from` reads from the live cache-events
    # is the failed download replay was told of and the refused object's size, not a failure of
    # it (each setting's own quota decides it); replaying with it decides and counts the same
    known, failed = fetch_outcomes(settings)
    assert failed == {gone_key} and gone_key not in known and known[over_cap] == sizes["o03.bin"]
    again = run(prepare(batches, known_sizes=known, failed_fetches=failed), setting, settings, keep_hot=True)
    assert (again.prefetches, again.hits, again.fills, again.evictions, again.cached_at_end, again.fetch_failures,
            again.refused) == (res.prefetches, res.hits, res.fills, res.evictions, res.cached_at_end,
                               res.fetch_failures, res.refused)


def _next(journal: list[tuple[Any, ...]], i: int, kind: str) -> int:
    """The next journal op of ``kind`` from ``i`` on (past the end: the last op)."""
    return next((j for j in range(i + 1, len(journal)) if journal[j][0] == kind), len(journal) - 1)


def _end_of_store(journal: list[tuple[Any, ...]], i: int) -> int:
    """The last journal op of the store at ``i`` (its refusal or its evictions)."""
    while i + 1 < len(journal) and journal[i + 1][0] in ("evicted", "refused"):
        i += 1
    return i


def cached_in_catalog_at_end(settings: Settings) -> set[str]:
    catalog = open_catalog(settings.catalog)
    try:
        return {e.cache_key for e in catalog.cached()}
    finally:
        catalog.close()
