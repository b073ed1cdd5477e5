"""Integration: the production `heatcache streams` worker, with cache-events in play, emits the
HotUrls `heatcache replay` simulates for the live settings from the same traffic and the same
fetch outcomes.

Traffic goes into `requests` as the sniffer publishes it (per-bucket batches, stamped with their
first event's time; `heatcache trace import`'s path: the sniffer itself needs a capture on a
live interface and gives no control over when a batch goes out). The messages go out one at a
time, in lockstep with the real worker (CLI, settings in the environment): after each, the test
waits until the worker folded it and flushed (its drain of cache-events runs then), reads the
HotUrls it emitted, and answers each as the fetcher would, publishing on `cache-events`: a key
cached already is skipped, one key (GONE) fails every download (then the worker backs it off
and retries it), others are stored under the byte quota with the cache store's own eviction
order (replay's StorePolicy, hits booked as the edge books them), the victims announced
``evicted`` (an evicted key still hot is re-emitted), and the answers the worker's drain re-emits
are answered in turn until the worker is quiet. Fill is off: every cache change is a prefetch.

Then replay reads the range back from `requests` and the outcomes from `cache-events`
(replay.kafkaio, what ``heatcache replay --from --to`` runs) and its HotUrls (key, admission ts,
admission id) must equal the worker's.

The quota (16 000 bytes) is under the hot set and the window an hour, so keys are evicted while
still hot. The worker re-admits an evicted or failed key only at a request, as replay does
(``drained`` stays empty). Before session 7's fix its drain of cache-events re-checked such a
key at once, at the partition's watermark, with no request: with these settings each re-fetch
evicted another hot key, re-fetched at the same watermark, without end (490 fetches at the
fourth message).

The messages go out in the order of their timestamps (a batch's first event), the order replay
reads the partitions back in (replay.kafkaio.read_range): the cache store is one for all
partitions, so under quota pressure the interleaving of partitions decides what is evicted.
A sniffer sends in that order to within its linger (200 ms); this test's batches linger for
minutes, and sent in the order they fill they took the two apart by a few keys.
"""

from __future__ import annotations

import functools
import random
import re
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from cachestore.policy import PolicyParams
from cachestore.quota import Quota, plan_space
from heatcache import contract
from heatcache.cachekey import KeyRules, cache_key, key_host
from heatcache.contract import CacheEvent, HotUrl, RequestEvent
from heatcache.kafkautil import producer
from heatcache.netutil import free_port
from heatcache.settings import Settings
from replay.engine import Setting, StreamsAdmission, prepare, run
from replay.kafkaio import fetch_outcomes, read_range
from replay.storepolicy import StorePolicy
from replay.trace import Trace, batches
from streams.heat import KeyHeat, PartitionHeat
from streams.rules import Decision, Rules, rules_from_settings
from tests.faults.stackproc import wait_for
from tests.streams.conftest import Workers, streams_settings

T0 = 1_790_000_000.0
QUOTA = 16_000  # under the hot set; the per-object cap is a quarter: 4000 bytes, over every object
HOSTS = ("a.example", "b.example", "c.example")
GONE = "/gone.bin"
DEADLINE = 30.0
WINDOW = 3600  # keys stay hot past their eviction (the refetch livelock's setting)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    ws = Workers(tmp_path)
    yield ws
    ws.stop_all()


def make_trace() -> tuple[Trace, dict[str, int]]:
    """Skewed popularity over 24 objects and GONE on three hosts, 10 clients, one request every
    20 s for about 80 minutes (the window is an hour: keys cool down and come back)."""
    rng = random.Random(19)
    sizes = {f"/o{i:02d}.bin": rng.choice((900, 1800, 2700, 3600)) for i in range(24)}
    names = sorted([*sizes, GONE])
    weights = [1 / (i + 1) ** 0.7 for i in range(len(names))]
    rules = KeyRules.load()
    trace = Trace()
    for i, path in enumerate(rng.choices(names, weights=weights, k=240)):
        host = HOSTS[names.index(path) % len(HOSTS)]
        key = cache_key(host, path, rules)
        ev = RequestEvent(T0 + 20.0 * i, f"c{rng.randrange(10)}", "GET", host, path, key, key)
        trace.add(ev, *((sizes[path], 200) if path in sizes else (0, 404)))
    return trace, {cache_key(HOSTS[names.index(p) % len(HOSTS)], p, rules): s for p, s in sizes.items()}


class Metrics:
    """The worker's counters, from its Prometheus endpoint."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"

    def read(self) -> Counter[str]:
        with urllib.request.urlopen(self.url, timeout=5) as resp:
            text = resp.read().decode()
        out: Counter[str] = Counter()
        for m in re.finditer(r"^heatcache_streams_(batches|flushes|cache_events|hot_urls)_total(?:\{[^}]*\})? "
                             r"([0-9.e+]+)$", text, re.M):
            out[m.group(1)] += int(float(m.group(2)))
        return out


class Fetcher:
    """What the fetcher and the cache store answer to a HotUrl, as cache-events (the store's
    own eviction order and quota, the one failing origin file)."""

    def __init__(self, sizes: dict[str, int], gone: str, half_life_s: float) -> None:
        self.sizes, self.gone = sizes, gone
        self.policy = StorePolicy(PolicyParams(half_life_s=half_life_s))
        self.quota = Quota(max_bytes=QUOTA, min_free_bytes=0)
        self.cached: set[str] = set()
        self.counts: Counter[str] = Counter()

    def requested(self, ev: RequestEvent) -> None:
        # the edge serves a request of a steered host (one of its objects cached) from the cache
        if ev.cache_key in self.cached and any(key_host(k) == key_host(ev.cache_key) for k in self.cached):
            self.policy.access(ev.cache_key, ev.ts)

    def answer(self, hot: HotUrl) -> list[CacheEvent]:
        key = hot.cache_key
        if key in self.cached:
            return []
        if key == self.gone:
            self.counts["failed"] += 1
            return [CacheEvent(cache_key=key, state="failed", ts=hot.ts)]
        size = self.sizes[key]
        plan = plan_space(self.quota, size, self.policy.used_bytes, 1 << 62)
        assert not plan.refused
        out = []
        for victim in self.policy.evict(plan.free_bytes, hot.ts) if plan.free_bytes else ():
            self.cached.discard(victim)
            self.counts["evicted"] += 1
            out.append(CacheEvent(cache_key=victim, state="evicted", ts=hot.ts))
        self.policy.insert(key, size, hot.ts, hot.clients)
        self.cached.add(key)
        self.counts["cached"] += 1
        out.append(CacheEvent(cache_key=key, state="cached", size=size, source="fetch", ts=hot.ts))
        return out


class WithReasons(StreamsAdmission):
    """replay's streams admission, keeping each HotUrl it admits (the engine keeps key and ts):
    its partitions' ``_admit`` is the one the engine (and its compiled loop) calls."""

    def __init__(self, rules: Rules) -> None:
        super().__init__(rules)
        self.admitted: list[HotUrl] = []

    def _part(self, partition: int) -> PartitionHeat:
        ph = self.parts.get(partition)
        if ph is None:
            ph = self.parts[partition] = _Recording(partition, self.rules, host_heat=False)
            ph.admitted = self.admitted
        return ph


class _Recording(PartitionHeat):
    admitted: list[HotUrl]

    def _admit(self, ck: str, kh: KeyHeat, ts: float, decision: Decision) -> HotUrl:
        hot = super()._admit(ck, kh, ts, decision)
        self.admitted.append(hot)
        return hot


@pytest.mark.integration
def test_live_worker_with_cache_events_emits_replays_hot_urls(kafka_settings: Settings, workers: Workers) -> None:
    half_life = 1e12
    settings = streams_settings(kafka_settings, heat_flush_interval_s=0.1, metrics_port=free_port(),
                                heat_window_s=WINDOW, heat_min_clients=2, cache_max_bytes=QUOTA,
                                cache_half_life_s=half_life, fetch_failed_backoff_s=60.0, edge_fill=False)
    trace, sizes = make_trace()
    gone = next(ev.cache_key for ev in trace.events if ev.path == GONE)
    # in timestamp order, as replay reads them back (see the module's docstring)
    msgs = sorted(batches(trace, settings.kafka_partitions, max_events=6, linger_s=600.0),
                  key=lambda b: b.events[0].ts)
    worker = workers.start(settings)
    metrics = Metrics(settings.metrics_port)
    wait_for(lambda: _try(metrics.read) is not None, DEADLINE, "the worker's /metrics", poll=0.05)
    prod = producer(settings.kafka_bootstrap, settings)
    hot_topic = settings.topic(contract.HOT_URLS)
    cons = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "acc19-hot",
                     "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    cons.assign([TopicPartition(hot_topic, p, 0) for p in range(settings.kafka_partitions)])
    emitted: list[HotUrl] = []
    fetcher = Fetcher(sizes, gone, half_life)
    published = 0
    drained: list[HotUrl] = []  # re-emitted by the drain of the answers (no new request)

    def read_hot(expected: int) -> list[HotUrl]:
        new: list[HotUrl] = []

        def more() -> bool:
            for m in cons.consume(100, 0.05):
                assert m.error() is None, m.error()
                new.append(contract.decode(m.value(), HotUrl))
            return len(emitted) + len(new) >= expected
        wait_for(more, DEADLINE, f"{expected} HotUrls on hot-urls", poll=0.0)
        assert len(emitted) + len(new) == expected
        emitted.extend(new)
        return new

    try:
        for i, batch in enumerate(msgs):
            before = metrics.read()
            for ev in batch.events:
                fetcher.requested(ev)
            prod.produce(settings.topic(contract.REQUESTS), key=str(batch.bucket).encode(), partition=batch.bucket,
                         value=contract.encode(batch), timestamp=int(batch.events[0].ts * 1000))
            assert prod.flush(10) == 0
            # folded, and flushed after it (the flush drains cache-events first: failed keys
            # whose back-off has passed are re-emitted there)
            wait_for(functools.partial(folded_and_flushed, metrics, i + 1, before["flushes"]), DEADLINE,
                     f"the worker to fold and flush message {i}", poll=0.01)
            new = read_hot(metrics.read()["hot_urls"])
            rounds = 0
            while new:  # answer them; the drain of the answers must not re-emit (only requests admit)
                rounds += 1
                # a second round would be a re-fetch of an evicted hot key with no request: at
                # one watermark this did not end while the hot set exceeded the quota
                assert rounds < 20, (i, [(h.cache_key, h.reason, h.ts) for h in emitted[-8:]], fetcher.counts)
                for hot in new:
                    for ce in fetcher.answer(hot):
                        prod.produce(settings.topic(contract.CACHE_EVENTS), key=ce.cache_key.encode(),
                                     value=contract.encode(ce))
                        published += 1
                assert prod.flush(10) == 0
                wait_for(functools.partial(drained_all, metrics, published), DEADLINE,
                         f"the worker to drain {published} cache-events", poll=0.01)
                new = read_hot(metrics.read()["hot_urls"])
                drained.extend(new)
    finally:
        cons.close()
        del prod
    assert worker.proc.poll() is None
    assert drained == [], [(h.cache_key, h.reason, h.ts) for h in drained]  # no admission without a request
    reasons = Counter(h.reason for h in emitted)
    assert len(emitted) > 20 and reasons["refetch-evicted"] >= 1 and reasons["retry-failed"] >= 1, reasons
    assert fetcher.counts["failed"] >= 2 and fetcher.counts["evicted"] >= 3, fetcher.counts

    # -- replay over the same range, the live settings, the outcomes from cache-events
    batches_back = read_range(settings.kafka_bootstrap, settings.topic(contract.REQUESTS), T0,
                              trace.events[-1].ts + 1, settings=settings)
    assert sum(len(b.events) for b in batches_back) == len(trace)
    known, failed = fetch_outcomes(settings)
    assert failed == {gone} and known == {k: s for k, s in sizes.items() if k in known}
    setting = Setting(window_s=WINDOW, min_clients=2, quota_bytes=QUOTA, half_life_s=half_life, fill=False)
    admission = WithReasons(rules_from_settings(setting.settings(settings)))
    res = run(prepare(batches_back, known_sizes=known, failed_fetches=failed), setting, settings, keep_hot=True,
              admission=admission)
    assert sorted(res.hot) == sorted((h.cache_key, h.ts) for h in admission.admitted)
    simulated = sorted((h.cache_key, h.ts, h.admission, h.reason) for h in admission.admitted)
    live = sorted((h.cache_key, h.ts, h.admission, h.reason) for h in emitted)
    only_live = sorted(set(live) - set(simulated))
    only_replay = sorted(set(simulated) - set(live))
    assert simulated == live, (f"{len(live)} emitted ({dict(reasons)}), {len(simulated)} simulated; only live: "
                               f"{only_live}; "
                               f"only replay: {only_replay}; re-emitted by the worker's drain: "
                               f"{[(h.cache_key, h.reason, h.ts) for h in drained]}")


def folded_and_flushed(metrics: Metrics, batches: int, flushes_before: int) -> bool:
    c = metrics.read()
    return c["batches"] == batches and c["flushes"] > flushes_before


def drained_all(metrics: Metrics, published: int) -> bool:
    return metrics.read()["cache_events"] == published


def _try(fn: Callable[[], object]) -> object:
    try:
        return fn()
    except OSError:
        return None
