"""The Faust app: heat per key and host in memory, durable once per flush interval, HotUrls out.

Messages are raw bytes decoded by the contract (a batch of events costs one decode). Each
`requests` partition's heat lives in memory in a :class:`streams.heat.PartitionHeat` (pure);
the agent only folds messages into it. Durable state is written per *time*, not per event:
every ``HEATCACHE_HEAT_FLUSH_INTERVAL_S`` the keys and hosts that changed are written to the
Faust table (its store and its changelog topic), with one meta record per partition holding
the watermark and the offset of the last message folded. Only once those writes, the HotUrls
and the dead-letters are acknowledged by Kafka are the messages acked, so Faust commits an
offset only when the state it reflects is durable (the stream runs with manual acks).

Recovery is Faust's: a worker that gets a partition restores the table from the changelog
(or from its RocksDB store), the meta record tells which offset the state holds, and messages
re-read from the committed offset up to it are skipped. Nothing is counted twice; HotUrls sent
after the last flush may be sent again, with the same admission id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
import weakref
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import faust
import orjson
from confluent_kafka import KafkaException
from faust.streams import _current_event
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from heatcache import contract
from heatcache.contract import DecodeError, HostHeat, HotUrl, RequestBatch
from heatcache.hostheat import encode_sketch
from heatcache.kafkautil import admin, admin_quiet, producer, ssl_context
from heatcache.metrics import STREAMS
from heatcache.runner import ConfigError, Runner
from heatcache.settings import Settings
from streams import gcpolicy
from streams.follow import CacheFollower
from streams.heat import PartitionHeat, compiled_available, meta_key, rows_decoder
from streams.outputs import DeliveryFailed, Outputs
from streams.rules import CacheView, Rules, RulesError, rules_from_settings

log = logging.getLogger(__name__)

EXPIRE_EVERY_S = 60.0


def check_topics(settings: Settings, bootstrap: str, timeout: float = 20.0, quiet: bool = False) -> set[str]:
    """Fail at once, with the topic's name, when a topic streams needs is missing or `requests`
    has another partition count than the tables (Faust would otherwise loop on "not found").
    The topics the broker has; KafkaException when no broker answers within ``timeout``
    (``quiet``: without librdkafka's log line per failed connection, ~20 a second)."""
    md = (admin_quiet if quiet else admin)(bootstrap, settings).list_topics(timeout=timeout)
    names = [contract.REQUESTS, contract.HOT_URLS, contract.CACHE_EVENTS, contract.DEAD_LETTER, contract.METRICS]
    if settings.heat_host_topic:
        names.append(contract.HOST_HEAT)
    missing = [settings.topic(n) for n in names if settings.topic(n) not in md.topics]
    if missing:
        raise ConfigError(f"missing topic(s) {', '.join(missing)} (create them, e.g. with `heatcache broker` "
                          "or the k8s KafkaTopics)")
    requests = md.topics[settings.topic(contract.REQUESTS)]
    if len(requests.partitions) != settings.kafka_partitions:
        raise ConfigError(f"topic {settings.topic(contract.REQUESTS)} has {len(requests.partitions)} partitions, "
                          f"HEATCACHE_KAFKA_PARTITIONS is {settings.kafka_partitions}: they must be equal")
    return set(md.topics)


START_BACKOFF_MAX_S = 10.0


def wait_for_broker(settings: Settings, bootstrap: str, run: Runner, timeout: float = 5.0) -> set[str] | None:
    """:func:`check_topics` until a broker answers: a broker not there (yet) at start-up is a lost
    dependency, waited for with back-off (health degraded("broker") meanwhile), never an exit;
    a missing topic or a partition mismatch is still a ConfigError at once. The topics, or None
    when the worker was told to stop while waiting (SIGTERM: Faust's handlers are not installed yet)."""
    delay = 0.5
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    run.stop.install()
    try:
        while not run.stop.is_set():
            try:
                topics = check_topics(settings, bootstrap, timeout, quiet=True)  # one warning a try
            except KafkaException as exc:
                run.health.degraded("broker", f"not reachable at start-up: {exc}")
                log.warning("broker %s not reachable (%s); trying again in %.1fs", bootstrap, exc, delay)
                run.stop.wait(delay)
                delay = min(START_BACKOFF_MAX_S, delay * 2)
                continue
            run.health.ok("broker")
            return topics
        return None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@dataclass
class _Pending:
    """The messages of a partition folded since its last flush: acked once the flush is durable."""

    events: list[Any] = field(default_factory=list)
    last: Any = None  # the newest event (the store of a RocksDB table writes under it)


IDLE_FRACTION = 0.1  # no message for this share of the flush interval: flush what is pending (Stage.idle_due)
MAX_FLUSHES_IN_FLIGHT = 2  # flushes whose writes are not all acknowledged yet; then the agent waits


class Stage:
    """The shell around the pure heat: partitions, flushing, cache events, metrics."""

    def __init__(self, settings: Settings, rules: Rules, app: faust.App, table: Any, topics: dict[str, str],
                 counters: Counter[str] | None = None, bootstrap: str = "") -> None:
        self.settings = settings
        self.bootstrap = bootstrap or settings.kafka_bootstrap or ""
        self.rules = rules
        self.app = app
        self.table = table
        self.topics = topics  # role -> topic name
        self.outputs: Outputs | None = None  # the producer; made on the worker's loop (start)
        self.parts: dict[int, PartitionHeat] = {}
        self.pending: dict[int, _Pending] = {}
        self.cache: dict[str, CacheView] = {}
        self.counters: Counter[str] = counters if counters is not None else Counter()
        self.lock = asyncio.Lock()
        self.inflight: list[asyncio.Task[None]] = []
        self.interval = settings.heat_flush_interval_s
        self.last_flush = time.monotonic()
        self.last_message = 0.0  # when the agent last got a message (monotonic)
        self.last_expire = time.monotonic()
        self.last_host_flush = time.monotonic()
        self.last_host_publish = 0.0  # the first flush publishes
        self.follower: CacheFollower | None = None
        self.pins: Any = None
        self.requests_topic = settings.topic(contract.REQUESTS)
        self.started = False
        self.rows = rows_decoder() if settings.heat_compiled else None
        self.last_top: bytes | None = None  # the latest streams-top record (the worker's /top)

    async def start(self) -> None:
        """Before the first message: know the cache's compacted history (no HotUrl for a key
        that is already cached), then go."""
        while self.follower is not None and not self.follower.ready.is_set():
            await asyncio.sleep(0.05)
        self.out()
        self.drain_cache_events()
        self.started = True

    def out(self) -> Outputs:
        if self.outputs is None:
            prod = producer(self.bootstrap, self.settings, **{  # TLS settings (k8s) from the settings
                "message.timeout.ms": 0,  # retry for ever: a broker outage delays acks, it never loses state
                "queue.buffering.max.messages": 1_000_000,
            })
            self.outputs = Outputs(prod, asyncio.get_running_loop(), self.table.changelog_topic.get_topic_name(),
                                   self.topics["dead"])
        return self.outputs

    # -- the hot path: one message
    def handle(self, event: Any) -> None:
        msg = event.message
        p = msg.partition
        self.last_message = time.monotonic()
        pend = self.pending.get(p)
        if pend is None:
            pend = self.pending[p] = _Pending()
        pend.events.append(event)
        pend.last = event
        # the compiled decode of plain batches (the contract's events as tuples, or None: then
        # the contract decodes it, and says why when it is refused)
        events: Sequence[Any] | None = self.rows(event.value) if self.rows is not None else None
        if events is None:
            try:
                events = contract.decode(event.value, RequestBatch).events
            except DecodeError as exc:
                # an undecodable message is folded as one with no events: its partition is
                # flushed (the meta record holds its offset) and its offset committed like any
                # other's, also when a partition never got anything else; re-read after a
                # crash, it is skipped, not dead-lettered twice
                if self.partition(p).fold(msg.offset, ()).skipped:
                    self.counters["skipped_batches"] += 1
                    return
                self.counters["dead_letter"] += 1
                log.warning("dead-letter %s[%s]@%s: %s", msg.topic, p, msg.offset, exc)
                self.out().send(self.topics["dead"], event.key, contract.dead_letter_value(
                    msg.topic, p, msg.offset, str(exc), event.value))
                return
        ph = self.partition(p)
        result = ph.fold(msg.offset, events, now=time.time())
        c = self.counters
        c["batches"] += 1
        if result.skipped:
            c["skipped_batches"] += 1
            return
        c["events"] += result.events
        if result.late:
            c["late"] += result.late
        if result.future:
            c["future"] += result.future
            log.warning("%s[%s]@%s: %d event(s) refused: %s", msg.topic, p, msg.offset, result.future,
                        result.future_reason)
        for hot in result.hot:
            self.send_hot(hot)

    def send_hot(self, hot: HotUrl) -> None:
        self.counters["hot." + hot.reason] += 1
        # per HotUrl at debug only: a busy campus admits thousands a second (the counters and the
        # streams-top record say what is hot)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("hot: %s (%d clients, %d requests, %s)", hot.cache_key, hot.clients, hot.heat, hot.reason)
        self.out().send(self.topics["hot"], hot.cache_key.encode(), contract.encode(hot))

    def partition(self, p: int) -> PartitionHeat:
        ph = self.parts.get(p)
        if ph is None:
            ph = self.parts[p] = PartitionHeat(p, self.rules, load=self.load, cache=self.cache,
                                               slots=self.settings.heat_state_slots,
                                               compiled=self.settings.heat_compiled)
            ph.restore_meta(self.load(meta_key(p)))
            if self.pins is not None:
                ph.pins = self.pins
            log.info("partition %d: state holds offsets up to %d (watermark %.3f)", p, ph.applied, ph.watermark)
        return ph

    def load(self, key: str) -> bytes | None:
        value = self.table.data.get(key.encode())
        return value if value is None or isinstance(value, bytes) else bytes(value)

    def due(self) -> bool:
        return time.monotonic() - self.last_flush >= self.interval

    def idle_due(self) -> bool:
        """The input went quiet (no message for IDLE_FRACTION of the flush interval) with
        messages not yet durable: flush now rather than at the interval. The end of a burst or
        of a backlog is then durable (and committed) at once; a busy input still flushes once
        per interval, and a sparse one at most 1/IDLE_FRACTION times per interval."""
        now = time.monotonic()
        return (now - self.last_message >= self.interval * IDLE_FRACTION
                and any(pend.events for pend in self.pending.values()))

    # -- durability: once per interval
    async def flush(self) -> None:
        """Write what changed (table + changelog), then ack its messages once every write of
        this flush, and every HotUrl/dead-letter before it, is acknowledged by the broker.

        The agent does not wait for the acknowledgements (folding goes on meanwhile); it only
        waits when MAX_FLUSHES_IN_FLIGHT flushes are still unacknowledged."""
        async with self.lock:
            self.inflight = [t for t in self.inflight if not t.done()]
            while len(self.inflight) >= MAX_FLUSHES_IN_FLIGHT:
                await asyncio.wait(self.inflight, return_when=asyncio.FIRST_COMPLETED)
                self.inflight = [t for t in self.inflight if not t.done()]
            self.last_flush = now = time.monotonic()
            self.drain_cache_events()
            expire = now - self.last_expire >= EXPIRE_EVERY_S
            if expire:
                self.last_expire = now
            hosts_due = now - self.last_host_flush >= self.settings.heat_host_flush_s
            if hosts_due:
                self.last_host_flush = now
            # host heat is for steering and operators: seconds old is fresh enough, and each
            # record costs a window merge per host (not per event)
            publish_hosts = now - self.last_host_publish >= self.settings.heat_host_publish_s
            if publish_hosts:
                self.last_host_publish = now
            work: list[tuple[int, PartitionHeat, _Pending]] = []
            for p, ph in list(self.parts.items()):
                pend = self.pending.pop(p, None)
                if expire:
                    ph.expire()
                if publish_hosts and self.settings.heat_host_topic and ph.touched_hosts:
                    self.send_host_heat(ph)  # reported, not acked on: also without new messages
                if pend is None or not pend.events:
                    if not (ph.dirty_keys or ph.expired_keys):
                        if pend is not None:
                            self.pending[p] = pend
                        continue
                    pend = pend or _Pending()
                if pend.last is None:
                    # a re-check admitted a key of a partition with no new message: its state
                    # is written with the next message of that partition
                    self.pending[p] = pend
                    continue
                self.write_state(p, ph, pend.last, hosts_due)
                work.append((p, ph, pend))
            if not work:
                return
            done = self.out().seal()  # every write since the last seal, HotUrls included
            self.inflight.append(asyncio.ensure_future(self._acked(done, work)))

    async def _acked(self, done: asyncio.Future[dict[int, int]], work: list[tuple[int, PartitionHeat, _Pending]]
                     ) -> None:
        try:
            changelog = await done
        except DeliveryFailed as exc:
            # refused for good (not an outage: those are retried for ever): nothing after it may
            # be acked; stop, the supervisor restarts the worker from the durable state
            log.error("a write was refused by the broker, stopping: %s", exc)
            await self.app.crash(exc)
            return
        persisted = getattr(self.table.data, "set_persisted_offset", None)
        if persisted is not None:  # what Faust's changelog callback does: RocksDB knows its offsets
            for cp, off in changelog.items():
                with contextlib.suppress(Exception):
                    persisted(TP(self.out().changelog_topic, cp), off)
        for p, ph, pend in work:
            if self.parts.get(p) is not ph:
                continue  # revoked meanwhile: its new owner re-reads these messages
            for ev in pend.events:
                ev.ack()
        self.counters["flushes"] += 1
        self.set_gauges()

    def set_gauges(self) -> None:
        c = self.counters
        c["partitions"] = len(self.parts)
        c["keys"] = sum(len(ph.keys) for ph in self.parts.values())
        c["hosts"] = sum(len(ph.hosts) for ph in self.parts.values())
        c["lag"] = sum(self.lags().values())

    def lags(self) -> dict[int, int]:
        out = {}
        for p, ph in self.parts.items():
            with contextlib.suppress(Exception):
                hw = self.app.consumer.highwater(TP(self.requests_topic, p))
                out[p] = max(0, (hw or 0) - ph.applied - 1)
        return out

    def write_state(self, p: int, ph: PartitionHeat, last: Any, hosts: bool) -> None:
        out = self.out()
        changelog = out.changelog_topic
        data = self.table.data
        token = _current_event.set(weakref.ref(last))  # RocksDB's store picks its partition by it
        try:
            for key, value in ph.take_dirty(hosts):
                kb = key.encode()
                if value is None:
                    with contextlib.suppress(KeyError):
                        del data[kb]
                else:
                    data[kb] = value
                out.send(changelog, kb, value, partition=p)  # the table's changelog, as Faust writes it
                self.counters["state_records"] += 1
        finally:
            _current_event.reset(token)

    def send_host_heat(self, ph: PartitionHeat) -> None:
        out = self.out()
        topic = self.topics["host_heat"]
        touched, ph.touched_hosts = ph.touched_hosts, set()
        spec = ph.spec
        first = spec.first_pane(ph.watermark, spec.window_s)
        for host in touched:
            if host not in ph.hosts:
                continue  # expired meanwhile
            st = ph.host_stats(host)
            sketch = encode_sketch(ph.hosts[host].window_registers(first, spec.sketch_p))
            ev = HostHeat(host=host, partition=ph.partition, requests=st.requests, tls=st.tls, clients=st.clients,
                          window_s=st.window_s, ts=ph.watermark, http_share=round(st.http_share, 4), sketch=sketch)
            out.send(topic, host.encode(), contract.encode(ev))

    # -- what the cache says
    def drain_cache_events(self) -> None:
        if self.follower is None:
            return
        queue = self.follower.queue
        n = self.settings.kafka_partitions
        while queue:
            key, state, ts = queue.popleft()
            self.counters["cache_events"] += 1
            ph = self.parts.get(contract.bucket_of(key, n))
            if ph is None:  # not our partition: remember the state for when it is
                # seen at the event's own time (no watermark of that partition here): a failed
                # key's back-off then runs from its failure after a reassignment (it was 0:
                # retried at its next request, however recent the failure)
                old = self.cache.get(key, CacheView())
                self.cache[key] = CacheView(state=state, ts=ts,
                                            failures=old.failures + 1 if state == "failed" else 0)
                continue
            # no re-check here: an evicted, purged or failed key is decided again at its next
            # request (the fold), as replay decides it. Re-admitting an evicted key at once
            # livelocked a quota smaller than the hot set: each re-fetch evicted another hot
            # key, re-emitted at the same event time, with no request asking for any of them
            ph.on_cache_event(key, state, ph.watermark)

    # -- rebalance
    async def on_revoked(self, revoked: set[TP]) -> None:
        for tp in revoked:
            if tp.topic == self.requests_topic:
                self.parts.pop(tp.partition, None)
                self.pending.pop(tp.partition, None)  # unacked: the new owner reads them again
        if self.outputs is not None:  # what this worker wrote lands before a new owner restores it
            await asyncio.get_running_loop().run_in_executor(None, self.outputs.flush, 30.0)

    # -- observing
    def top(self) -> dict[str, Any]:
        """The `streams-top` record: the hottest keys and hosts and each partition's lag."""
        top_n = self.settings.heat_top_n
        keys: list[tuple[str, int]] = []
        hosts: Counter[str] = Counter()
        for ph in self.parts.values():
            keys.extend(ph.top_keys(top_n))
            for host in ph.hosts:
                hosts[host] += ph.host_stats(host).requests
        keys.sort(key=lambda kv: -kv[1])
        return {"stage": "streams-top", "node": self.settings.node_name, "ts": time.time(),
                "top_keys": orjson.dumps(keys[:top_n]).decode(),
                "top_hosts": orjson.dumps(hosts.most_common(top_n)).decode(),
                "lag": orjson.dumps({str(p): n for p, n in sorted(self.lags().items())}).decode()}


FETCH_MAX_WAIT_MS = 100


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread with a short broker long-poll. Faust fixes fetch_max_wait_ms at
    1500; aiokafka sends one fetch per broker at a time, so a fetch of only caught-up partitions
    (or idle standby changelogs) held back, for up to 1.5 s, the next fetch of partitions that
    have data: measured, the worker waited for input a quarter of the time on a backlog."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read by AIOKafkaConsumer.start() (its Fetcher)
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _commit(self, offsets: Any) -> bool:
        done = bool(await super()._commit(offsets))
        if not done:
            # Faust's driver returns False without a word for a commit the group refused while
            # rebalancing (and records the offsets as committed anyway: put back by
            # _commit_offsets below, so they are committed again). Said here so that a worker
            # whose group offsets stall can be told from one with nothing to commit.
            log.warning("offset commit not done (group rebalancing?): %s",
                        {f"{tp.topic}[{tp.partition}]": off for tp, off in offsets.items()})
        return done

    async def _commit_offsets(self, offsets: Any, start_new_transaction: bool = True) -> bool:
        """Faust's, with the committed-offset record put back when the commit was not done.

        Faust 0.15 records ``offsets`` as committed whatever the commit's answer, and commits a
        partition again only past the recorded offset: an offset the group refused (aiokafka's
        "already rebalanced", during a rebalance that kept the partition here) was then never
        committed, while no newer message came (a caught-up worker's group lag stayed). The
        record is put back only where it still holds what this call wrote (a rebalance meanwhile
        may have set it from the broker)."""
        before = {tp: self._committed_offset.get(tp) for tp in offsets}
        done = bool(await super()._commit_offsets(offsets, start_new_transaction))
        if not done:
            for tp, offset in offsets.items():
                if tp in self._committed_offset and self._committed_offset[tp] == offset != before[tp]:
                    if before[tp] is None:
                        del self._committed_offset[tp]
                    else:
                        self._committed_offset[tp] = before[tp]
        return done


def make_app(settings: Settings, bootstrap: str, counters: Counter[str] | None = None,
             on_ready: Any = None) -> tuple[faust.App, Stage]:
    """Build the Faust app for these settings (no module-global app: tests build their own)."""
    rules = rules_from_settings(settings)
    parts = settings.kafka_partitions
    datadir = (settings.state_dir / "faust").resolve()
    datadir.mkdir(parents=True, exist_ok=True)  # a fresh state directory must not crash the worker
    store = "memory://" if settings.heat_store == "memory" else "rocksdb://"
    app = faust.App(
        settings.topic_prefix + settings.app_id,
        broker=",".join(f"kafka://{b}" for b in bootstrap.split(",")),
        store=store,
        web_enabled=False,
        topic_partitions=parts,
        topic_replication_factor=1,
        topic_allow_declare=True,
        datadir=str(datadir),
        consumer_auto_offset_reset="earliest",
        # offsets are committed by time; they only cover messages acked after a durable flush
        broker_commit_every=1_000_000,
        broker_commit_interval=settings.heat_commit_interval_s or settings.heat_flush_interval_s,
        broker_session_timeout=settings.streams_session_timeout_s,  # a killed worker's partitions move on
        broker_heartbeat_interval=1.0,
        consumer_group_instance_id=settings.streams_instance_id or None,
        stream_wait_empty=False,
        # no leader-election topic (nothing here runs on the leader only): its one empty
        # partition was fetched alone while `requests` data waited in the buffer, and that
        # fetch long-polled (1.5 s, fixed by Faust) with no other fetch to the broker meanwhile
        topic_disable_leader=True,
        stream_buffer_maxsize=16384,
        producer_compression_type="lz4",
        producer_linger_ms=20,
        broker_credentials=ssl_context(settings),  # Kafka TLS (k8s); None = PLAINTEXT
    )
    app.transport.Consumer = _Consumer  # type: ignore[misc]  # a short long-poll (FETCH_MAX_WAIT_MS)
    requests = app.topic(settings.topic(contract.REQUESTS), key_serializer="raw", value_serializer="raw",
                         partitions=parts)
    # written through streams.outputs (confluent-kafka), not Faust's producer: see there why
    topics = {"hot": settings.topic(contract.HOT_URLS), "dead": settings.topic(contract.DEAD_LETTER),
              "metrics": settings.topic(contract.METRICS), "host_heat": settings.topic(contract.HOST_HEAT)}
    table = app.Table("heat", default=None, partitions=parts, key_type=bytes, value_type=bytes)
    stage = Stage(settings, rules, app, table, topics, counters, bootstrap)

    @app.agent(requests, name="heat")
    async def heat(stream: Any) -> None:  # a faust Stream (StreamT's stub lacks noack)
        async for event in stream.noack().events():
            if not stage.started:
                await stage.start()
            stage.handle(event)
            if stage.due():
                await stage.flush()

    @app.timer(max(0.05, settings.heat_flush_interval_s * IDLE_FRACTION / 2))
    async def flush_idle() -> None:
        if stage.due() or stage.idle_due():
            await stage.flush()

    async def on_revoked(_sender: Any, revoked: set[TP], **_kw: Any) -> None:
        await stage.on_revoked(revoked)

    app.on_partitions_revoked.connect(on_revoked)  # type: ignore[arg-type]

    @app.timer(settings.heat_metrics_interval_s)
    async def top() -> None:  # the counters' snapshots are the runner's; this adds what is not a number
        if stage.started:
            stage.last_top = orjson.dumps(stage.top())  # served as is (runner's HTTP thread)
            stage.out().send(topics["metrics"], b"streams-top", stage.last_top)

    announced = False

    @app.timer(0.25)
    async def ready() -> None:
        nonlocal announced
        follower_ready = stage.follower is None or stage.follower.ready.is_set()
        if not announced and follower_ready and app.consumer.assignment():
            announced = True
            if on_ready is not None:
                on_ready()

    return app, stage


def run(settings: Settings, bootstrap: str, loglevel: str = "info") -> int:
    """Run the app in a Faust worker under the stage runner until SIGTERM/SIGINT (Faust's worker
    handles the signals and stops cleanly); the exit status.

    Configuration errors (missing topics, partition mismatch, invalid rules) exit at once with
    the runner's EX_CONFIG: a supervisor must not restart a worker that cannot work."""
    return Runner(settings, STREAMS, bootstrap=bootstrap).run(lambda r: main(r, settings, bootstrap, loglevel),
                                                              install_signals=False)


def main(run: Runner, settings: Settings, bootstrap: str, loglevel: str = "info") -> None:
    if settings.heat_compiled and not compiled_available():
        raise ConfigError("streams._fold is not built (./dev builds it: gcc and the Python headers); "
                          "set HEATCACHE_HEAT_COMPILED=false to run the Python reference")
    topics = wait_for_broker(settings, bootstrap, run)
    if topics is None:
        return  # stopped before the broker answered
    try:
        app, stage = make_app(settings, bootstrap, run.counters, on_ready=run.ready)
    except RulesError as exc:
        raise ConfigError(str(exc)) from None
    run.views["/top"] = lambda: stage.last_top  # top keys and hosts, lag per partition
    follower = CacheFollower(bootstrap, settings.topic(contract.CACHE_EVENTS), config=settings.kafka_client_config(),
                             health=run.health)  # rel: the stage's /health follows the broker
    follower.start()
    stage.follower = follower
    control = _control_follower(settings, bootstrap, topics)
    if control is not None:
        stage.pins = lambda key, host: control.state.pin(key, host)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    gcpolicy.tune()  # the heat is long-lived objects: fewer, bigger collections (streams/gcpolicy.py)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:  # Faust's worker ends with SystemExit(0) after a clean stop
        if exc.code not in (0, None):
            raise RuntimeError(f"faust worker exited with {exc.code}") from None
    finally:
        run.stop.set()
        if stage.outputs is not None:
            stage.outputs.close()
        follower.stop()
        if control is not None:
            control.stop()


def _control_follower(settings: Settings, bootstrap: str, topics: set[str]) -> Any:
    """Operator pins from the `control` topic (console), when the topic exists (in ``topics``,
    the broker's as :func:`wait_for_broker` found them)."""
    topic = settings.topic(contract.CONTROL)
    if topic not in topics:
        return None
    from heatcache.control import ControlFollower

    follower = ControlFollower(bootstrap, topic, config=settings.kafka_client_config())
    follower.start()
    return follower
