"""confluent-kafka glue shared by the stages: client configs, dead-lettering, metrics records, and
the one follower of a (compacted) topic: read it from the beginning, be ``ready`` once caught up,
keep following, survive a broker that is not there yet or goes away (see :class:`Follower`)."""

from __future__ import annotations

import logging
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import orjson
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from heatcache import contract
from heatcache.settings import Settings

log = logging.getLogger(__name__)


# -- client security (Kafka TLS): every client of every stage is built with this ---------------

def client_config(settings: Settings | None) -> dict[str, Any]:
    """The security part of a librdkafka client's config: ``security.protocol`` and the ``ssl.*``
    files for a TLS listener (k8s: Strimzi's TLS listener with per-stage client certs), ``{}`` for
    PLAINTEXT or when no settings are given (tools and tests on the local broker)."""
    return settings.kafka_client_config() if settings is not None else {}


def admin(bootstrap: str, settings: Settings | None = None) -> AdminClient:
    """An AdminClient (metadata, topic creation) with the client security settings."""
    return AdminClient({"bootstrap.servers": bootstrap, **client_config(settings)})


def admin_quiet(bootstrap: str, settings: Settings | None = None) -> AdminClient:
    """An AdminClient that does not log connection errors (a probe asking a lost broker)."""
    quiet: dict[str, Any] = {"error_cb": lambda _e: None, "log_level": 0}
    return AdminClient({"bootstrap.servers": bootstrap, **quiet, **client_config(settings)})


def ssl_context(settings: Settings | None) -> ssl.SSLContext | None:
    """The TLS context for Python Kafka clients (Faust/aiokafka ``broker_credentials``) from the
    same settings as :func:`client_config`; None for PLAINTEXT. Verifies the broker against
    ``kafka_ssl_ca`` (hostname included) and presents the client certificate when one is set."""
    if settings is None or settings.kafka_security_protocol != "SSL":
        return None
    ca = settings.kafka_ssl_ca
    ctx = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    if settings.kafka_ssl_cert is not None:
        key = settings.kafka_ssl_key
        ctx.load_cert_chain(str(settings.kafka_ssl_cert), str(key) if key is not None else None)
    return ctx


def producer(bootstrap: str, settings: Settings | None = None, **extra: Any) -> Producer:
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "linger.ms": 20,
        "compression.type": "lz4",
        "enable.idempotence": True,
        "queue.buffering.max.messages": 200_000,
        "message.timeout.ms": 120_000,
        **client_config(settings),
    }
    config.update(extra)
    return Producer(config)


def consumer(bootstrap: str, group: str, settings: Settings | None = None, **extra: Any) -> Consumer:
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        # Offsets are stored after a message is handled and committed in the background and at
        # close: at-least-once, which every stage tolerates (its work is idempotent per key).
        "enable.auto.commit": True,
        "enable.auto.offset.store": False,
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 1_000,
        **client_config(settings),
    }
    config.update(extra)
    return Consumer(config)


def dead_letter(prod: Producer, settings: Settings, msg: Message, reason: str) -> None:
    """Send an undecodable message to `dead-letter` with where it came from and why."""
    log.warning("dead-letter %s[%s]@%s: %s", msg.topic(), msg.partition(), msg.offset(), reason)
    prod.produce(
        settings.topic(contract.DEAD_LETTER),
        key=msg.key(),
        value=contract.dead_letter_value(
            msg.topic() or "", msg.partition() or 0, msg.offset() or 0, reason, msg.value()
        ),
    )


def publish_metrics(prod: Producer, settings: Settings, stage: str, values: dict[str, Any]) -> None:
    """One flat JSON object a line on the `metrics` topic, keyed by stage."""
    record = {"stage": stage, "node": settings.node_name, "ts": time.time(), **values}
    prod.produce(settings.topic(contract.METRICS), key=stage.encode(), value=orjson.dumps(record))


def assign_from_beginning(cons: Consumer, topic: str, timeout: float = 30.0) -> list[int]:
    """Assign every partition of ``topic`` at its first offset (no group offsets); the partitions."""
    md = cons.list_topics(topic, timeout=timeout)
    parts = list(md.topics[topic].partitions) if topic in md.topics else []
    cons.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    return parts


def read_topic(bootstrap: str, topic: str, timeout: float = 20.0, settings: Settings | None = None) -> list[Message]:
    """Every message now in ``topic`` (all partitions, from the beginning): for tools and tests."""
    cons = Consumer({"bootstrap.servers": bootstrap, "group.id": "heatcache-reader", "enable.auto.commit": False,
                     "enable.partition.eof": True, **client_config(settings)})
    try:
        pending = set(assign_from_beginning(cons, topic, timeout))
        out: list[Message] = []
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            msg = cons.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition())
                continue
            out.append(msg)
        return out
    finally:
        cons.close()


# -- the one compacted-topic follower ------------------------------------------------------------

TP = tuple[str, int]  # (topic, partition)

# Errors a broker that is starting, restarting or electing a leader answers for a while: wait and
# retry, they say nothing about the request itself.
TRANSIENT = frozenset({
    KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE, KafkaError._TIMED_OUT,
    KafkaError._WAIT_COORD, KafkaError._UNKNOWN_PARTITION, KafkaError._UNKNOWN_TOPIC,
    KafkaError._NOENT, KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.BROKER_NOT_AVAILABLE, KafkaError.REPLICA_NOT_AVAILABLE, KafkaError.REQUEST_TIMED_OUT,
    KafkaError.NETWORK_EXCEPTION, KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.KAFKA_STORAGE_ERROR,
    KafkaError.FENCED_LEADER_EPOCH, KafkaError.UNKNOWN_LEADER_EPOCH, KafkaError.OFFSET_NOT_AVAILABLE,
})
# error_cb codes that mean "no broker reachable" (health degraded until a request succeeds again)
BROKER_LOST = frozenset({KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE})


def is_transient(code: int) -> bool:
    """True for errors that go away by themselves (leader election, broker (re)starting)."""
    return code in TRANSIENT


def next_delay(delay: float, cap: float = 5.0) -> float:
    """Exponential back-off: the wait after one more failure (pure)."""
    return min(cap, max(delay, 0.05) * 2)


def pending_at_start(watermarks: Mapping[TP, tuple[int, int]], starts: Mapping[TP, int]) -> set[TP]:
    """The partitions to read to their end before the follower is caught up (pure): those holding
    data (high > low) that we do not start at (or past) their end."""
    out: set[TP] = set()
    for tp, (low, high) in watermarks.items():
        start = starts.get(tp, OFFSET_BEGINNING)
        if high <= low or start == OFFSET_END or (start >= 0 and start >= high):
            continue
        out.add(tp)
    return out


class CatchUp:
    """Partition-EOF bookkeeping (pure): ``eof(tp)`` as each partition reaches its end;
    ``take()`` is True exactly once, when nothing is pending any more."""

    def __init__(self, pending: Iterable[TP]) -> None:
        self.pending = set(pending)
        self.announced = False

    def eof(self, tp: TP) -> None:
        self.pending.discard(tp)

    def take(self) -> bool:
        if self.announced or self.pending:
            return False
        self.announced = True
        return True


class HealthLike(Protocol):
    def degraded(self, dependency: str, reason: str) -> None: ...
    def ok(self, dependency: str) -> None: ...


class Follower(threading.Thread):
    """Reads ``topics`` (every partition, from the beginning unless :meth:`starts` says otherwise,
    no committed offsets) and keeps following them, handing messages to :meth:`handle`.

    - ``ready`` is set (by :meth:`on_caught_up`) once every partition reached the end it had when
      the follower started: a stage waits for it to know the compacted history.
    - A broker that is not reachable yet, has no leader for a fresh topic yet
      (NOT_LEADER_FOR_PARTITION from the watermark query) or goes away later is waited for with
      back-off, never fatal: the thread only ends on :meth:`stop`.
    - ``health`` (e.g. the runner's) is ``degraded(dependency)`` while no broker answers and ``ok``
      again once one does (checked about every ``probe_s`` while lost); ``lost`` is the reason.

    A topic that does not exist is skipped, or with ``require_topics`` waited for (a stage that
    cannot serve without it, started before its topics are created).
    Subclass and override :meth:`handle` (or pass ``handle=``); ``batch`` > 1 hands over what is
    already fetched in one call. Messages with errors never reach ``handle``."""

    def __init__(self, bootstrap: str, topics: Sequence[str], *, name: str = "follower",
                 handle: Callable[[list[Message], bool], None] | None = None, group_prefix: str = "heatcache-follower",
                 health: HealthLike | None = None, dependency: str = "broker", batch: int = 1,
                 stopping: threading.Event | None = None, config: Mapping[str, Any] | None = None,
                 probe_s: float = 1.0, require_topics: bool = False) -> None:
        super().__init__(name=name, daemon=True)
        self.require_topics = require_topics  # a missing topic is waited for (else skipped)
        self.bootstrap = bootstrap
        self.topics = list(topics)
        self.ready = threading.Event()
        self.stopping = stopping if stopping is not None else threading.Event()
        self.health = health
        self.dependency = dependency
        self.batch = max(1, batch)
        self.probe_s = probe_s
        self.lost = ""  # why no broker answers; "" while one does
        self.restarts = 0
        self._handle = handle
        self._group_prefix = group_prefix
        self._config = dict(config or {})
        self._last_probe = 0.0

    # -- hooks
    def handle(self, msgs: list[Message], caught_up: bool) -> None:
        """Messages in fetch order (maybe none when only ``caught_up`` became true)."""
        if self._handle is not None:
            self._handle(msgs, caught_up)

    def on_caught_up(self) -> None:
        self.ready.set()

    def starts(self, consumer: Consumer, parts: list[TopicPartition]) -> list[TopicPartition]:
        """Where to start each partition (default: its first offset)."""
        return parts

    # -- control
    def stop(self) -> None:
        self.stopping.set()

    def wait_ready(self, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # short waits: a stop is noticed
            if self.ready.wait(min(0.2, max(0.0, deadline - time.monotonic()))):
                return True
        return self.ready.is_set()

    # -- health
    def _lost(self, reason: str) -> None:
        self.lost = reason
        if self.health is not None:
            self.health.degraded(self.dependency, reason)

    def _back(self) -> None:
        if self.lost:
            log.warning("%s: broker reachable again", self.name)
        self.lost = ""
        if self.health is not None:
            self.health.ok(self.dependency)

    def _error_cb(self, err: KafkaError) -> None:
        if err.code() in BROKER_LOST:
            self._lost(err.str())
        else:
            log.warning("%s: %s", self.name, err.str())

    # -- the thread
    def _consumer(self) -> Consumer:
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            "group.id": f"{self._group_prefix}-{uuid.uuid4()}",  # never commits: always rebuilds
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            "error_cb": self._error_cb,
        }
        config.update(self._config)
        return Consumer(config)

    def _assign(self, cons: Consumer) -> CatchUp:
        parts: list[TopicPartition] = []
        md = cons.list_topics(timeout=10)
        for topic in self.topics:
            if topic not in md.topics and self.require_topics:
                missing = KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, f"topic {topic} does not exist (yet)")
                raise KafkaException(missing)
            if topic in md.topics:
                err = md.topics[topic].error
                if err is not None and err.code() != KafkaError.NO_ERROR:
                    raise KafkaException(err)
                parts.extend(TopicPartition(topic, p, OFFSET_BEGINNING) for p in md.topics[topic].partitions)
        parts = self.starts(cons, parts)
        marks = {(tp.topic, tp.partition): cons.get_watermark_offsets(TopicPartition(tp.topic, tp.partition),
                                                                       timeout=10, cached=False)
                 for tp in parts}
        catch = CatchUp(pending_at_start(marks, {(tp.topic, tp.partition): tp.offset for tp in parts}))
        cons.assign(parts)
        return catch

    def run(self) -> None:
        delay = 0.2
        while not self.stopping.is_set():
            cons = self._consumer()
            try:
                catch = self._assign(cons)
                self._back()
                delay = 0.2
                self._follow(cons, catch)
            except KafkaException as exc:  # not there yet / no leader yet / gone: wait, retry
                err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
                if err is not None and not is_transient(err.code()):
                    log.warning("%s: %s; retrying in %.1fs", self.name, exc, delay)
                else:
                    log.info("%s: broker not ready (%s); retrying in %.1fs", self.name, exc, delay)
                self._lost(str(exc))
                self.restarts += 1
                self.stopping.wait(delay)
                delay = next_delay(delay)
            except Exception:  # a bug in a handler must not end the follower for good
                log.exception("%s failed; starting again in %.1fs", self.name, delay)
                self.restarts += 1
                self.stopping.wait(delay)
                delay = next_delay(delay)
            finally:
                cons.close()

    def _follow(self, cons: Consumer, catch: CatchUp) -> None:
        if catch.take():
            self.handle([], True)
            self.on_caught_up()
        while not self.stopping.is_set():
            first = cons.poll(0.2)
            if self.lost:
                self._probe(cons)
            if first is None:
                continue
            batch = [first, *cons.consume(self.batch - 1, 0)] if self.batch > 1 else [first]
            msgs: list[Message] = []
            for msg in batch:
                err = msg.error()
                if err is None:
                    msgs.append(msg)
                elif err.code() == KafkaError._PARTITION_EOF:
                    catch.eof((msg.topic() or "", msg.partition() or 0))
                elif not is_transient(err.code()):
                    log.warning("%s: %s", self.name, err.str())
            if msgs and self.lost:
                self._back()
            caught_up = catch.take()
            if msgs or caught_up:
                self.handle(msgs, caught_up)
            if caught_up:
                self.on_caught_up()

    def _probe(self, cons: Consumer) -> None:
        """While the broker is lost, ask it something about once a ``probe_s``: ok when it answers."""
        now = time.monotonic()
        if now - self._last_probe < self.probe_s:
            return
        self._last_probe = now
        try:
            cons.list_topics(self.topics[0] if self.topics else None, timeout=min(2.0, self.probe_s * 2))
        except KafkaException:
            return
        self._back()
