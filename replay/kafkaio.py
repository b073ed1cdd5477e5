"""The I/O of replay: publish a trace into `requests` (original timestamps), read a time
range of `requests` back (``offsets_for_times`` on every partition), and read production's
fetch outcomes from `cache-events`."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from heatcache import contract
from heatcache.contract import DecodeError, RequestBatch
from heatcache.kafkautil import client_config, producer, read_topic
from heatcache.settings import Settings
from replay.trace import Trace, batches

log = logging.getLogger(__name__)


def topic_partitions(bootstrap: str, topic: str, timeout: float = 30.0, settings: Settings | None = None) -> int:
    from sniffer.app import topic_partitions as parts

    return parts(bootstrap, topic, settings)


@dataclass
class ImportReport:
    events: int = 0
    batches: int = 0
    errors: int = 0
    bad: Counter[str] = field(default_factory=Counter)


def publish_trace(trace: Trace, bootstrap: str, topic: str, max_events: int = 500, linger_s: float = 0.2,
                  prod: Producer | None = None, settings: Settings | None = None) -> ImportReport:
    """Every event of ``trace`` into ``topic``, batched per partition bucket as the sniffer does,
    each message stamped with the capture time of its first event (so time ranges find it)."""
    partitions = topic_partitions(bootstrap, topic, settings=settings)
    own = prod is None
    prod = prod or producer(bootstrap, settings, **{"linger.ms": 50})
    report = ImportReport(bad=Counter(trace.bad))

    def delivered(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            report.errors += 1
            log.error("delivery failed: %s", err)

    for batch in batches(trace, partitions, max_events, linger_s):
        value = contract.encode(batch)
        while True:
            try:
                prod.produce(topic, value=value, key=str(batch.bucket).encode(), partition=batch.bucket,
                             timestamp=int(batch.events[0].ts * 1000), on_delivery=delivered)
                break
            except BufferError:
                prod.poll(0.1)
        report.batches += 1
        report.events += len(batch.events)
        prod.poll(0)
    left = prod.flush(60)
    if left:
        report.errors += left
    if own:
        prod.flush(10)
    return report


def read_range(bootstrap: str, topic: str, start: float, end: float | None, timeout: float = 60.0,
               bad: Counter[str] | None = None, settings: Settings | None = None) -> list[RequestBatch]:
    """The batches of ``topic`` whose messages are stamped in [start, end) (end None: up to now's
    end of the log), all partitions, ordered by time; events outside the range are dropped.
    ``timeout``: how long the broker may send nothing before the read gives up (a long range
    takes as long as it takes).

    Undecodable messages are counted in ``bad`` (replay reads, it does not dead-letter)."""
    bad = bad if bad is not None else Counter()
    cons = Consumer({"bootstrap.servers": bootstrap, "group.id": "heatcache-replay", "enable.auto.commit": False,
                     "enable.partition.eof": False, **client_config(settings)})
    try:
        md = cons.list_topics(topic, timeout=timeout)
        if topic not in md.topics or md.topics[topic].error is not None:
            raise RuntimeError(f"topic {topic} not found")
        parts = sorted(md.topics[topic].partitions)
        starts = cons.offsets_for_times([TopicPartition(topic, p, int(start * 1000)) for p in parts], timeout)
        stops: dict[int, int] = {}
        for p in parts:
            _low, high = cons.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
            stops[p] = high
        if end is not None:
            for tp in cons.offsets_for_times([TopicPartition(topic, p, int(end * 1000)) for p in parts], timeout):
                if tp.offset >= 0:  # -1: no message at or after end, read to the high watermark
                    stops[tp.partition] = min(stops[tp.partition], tp.offset)
        assign = []
        pending: dict[int, int] = {}
        for tp in starts:
            if tp.offset >= 0 and tp.offset < stops[tp.partition]:
                assign.append(TopicPartition(topic, tp.partition, tp.offset))
                pending[tp.partition] = stops[tp.partition]
        cons.assign(assign)
        rows: list[tuple[float, int, int, RequestBatch]] = []
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            msg = cons.poll(0.5)
            if msg is None:
                continue
            # ``timeout`` bounds a stall, not the whole read: a week of campus traffic takes longer
            deadline = time.monotonic() + timeout
            if msg.error() is not None:
                continue
            p, off = msg.partition() or 0, msg.offset() or 0
            if p not in pending or off >= pending[p]:
                continue
            if off + 1 >= pending[p]:
                del pending[p]
            try:
                batch = contract.decode(msg.value(), RequestBatch)
            except DecodeError:
                bad["undecodable"] += 1
                continue
            keep = [i for i, ev in enumerate(batch.events) if ev.ts >= start and (end is None or ev.ts < end)]
            if len(keep) != len(batch.events):
                batch = RequestBatch(batch.bucket, tuple(batch.events[i] for i in keep),
                                     tuple(batch.sizes[i] for i in keep) if batch.sizes else (),
                                     tuple(batch.statuses[i] for i in keep) if batch.statuses else ())
            if batch.events:
                rows.append((batch.events[0].ts, p, off, batch))
        if pending:
            raise TimeoutError(f"replay: partitions {sorted(pending)} not read to their end: nothing came for "
                               f"{timeout:.0f} s")
        rows.sort(key=lambda r: r[:3])
        return [r[3] for r in rows]
    finally:
        cons.close()


def trace_of(batches_: list[RequestBatch]) -> Trace:
    """The requests of read batches as one time-ordered trace."""
    trace = Trace()
    for b in batches_:
        trace.extend_batch(b)
    trace.sort()
    return trace


def fetch_outcomes(settings: Settings) -> tuple[dict[str, int], set[str]]:
    """What production's `cache-events` tell replay: the object sizes the node cached (or was
    refused: too large for its quota), and the keys whose last event is a ``failed`` download
    (their prefetch fails in replay too).

    A ``refused`` event is not a failed download: it is production's quota deciding, which replay
    does itself under each setting's quota (``plan_space``, with the object's size when known)."""
    return outcomes_of(read_topic(settings.kafka_bootstrap, settings.topic(contract.CACHE_EVENTS), settings=settings))


def outcomes_of(messages: Iterable[Any]) -> tuple[dict[str, int], set[str]]:
    """fetch_outcomes over messages (anything with ``value()``) in the topic's order (pure)."""
    known: dict[str, int] = {}
    failed: set[str] = set()
    for msg in messages:
        try:
            ev = contract.decode(msg.value(), contract.CacheEvent)
        except DecodeError:
            continue
        if ev.size:
            known[ev.cache_key] = ev.size
        if ev.state == "failed" and not ev.refused:
            failed.add(ev.cache_key)
        else:
            failed.discard(ev.cache_key)
    return known, failed
