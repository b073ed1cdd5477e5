"""Helpers for the streams integration tests: real `heatcache streams` workers on the session's
Kafka broker, input produced the way the sniffer produces it, and the topics read back."""

from __future__ import annotations

import os
import signal
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from heatcache import contract
from heatcache.contract import HotUrl, RequestBatch, RequestEvent
from heatcache.kafkautil import producer, read_topic
from heatcache.settings import Settings
from heatcache.stack import StageProcess, settings_env


def produce(settings: Settings, events: Iterable[RequestEvent], per_message: int = 50) -> int:
    """Publish events as the sniffer does: batches per partition bucket, bucket = partition."""
    prod = producer(settings.kafka_bootstrap)
    buckets: dict[int, list[RequestEvent]] = defaultdict(list)
    sent = 0
    topic = settings.topic(contract.REQUESTS)
    for ev in events:
        b = contract.bucket_of(ev.cache_key, settings.kafka_partitions)
        buckets[b].append(ev)
        if len(buckets[b]) >= per_message:
            prod.produce(topic, key=str(b).encode(), partition=b,
                         value=contract.encode(RequestBatch(b, tuple(buckets.pop(b)))))
            sent += 1
    for b, evs in buckets.items():
        prod.produce(topic, key=str(b).encode(), partition=b, value=contract.encode(RequestBatch(b, tuple(evs))))
        sent += 1
    assert prod.flush(30) == 0
    return sent


def hot_urls(settings: Settings) -> list[HotUrl]:
    msgs = read_topic(settings.kafka_bootstrap, settings.topic(contract.HOT_URLS), timeout=10)
    return [contract.decode(m.value(), HotUrl) for m in msgs]


class Workers:
    """Start `heatcache streams` workers as a user does (the CLI, settings in the environment)."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: list[StageProcess] = []

    def start(self, settings: Settings, name: str = "w", wait: bool = True) -> StageProcess:
        log_dir = self.tmp_path / f"logs-{name}-{len(self.procs)}"
        log_dir.mkdir(parents=True)
        env = {**os.environ, **settings_env(settings)}
        proc = StageProcess("streams", env, log_dir, None)
        self.procs.append(proc)
        if wait:
            self.wait_ready(proc)
        return proc

    def wait_ready(self, proc: StageProcess, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while not proc.ready.wait(0.2):
            if proc.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"streams worker did not get ready:\n{proc.log_path.read_text()[-3000:]}")

    def kill9(self, proc: StageProcess) -> None:
        os.killpg(proc.proc.pid, signal.SIGKILL)
        proc.proc.wait(10)

    def stop_all(self) -> None:
        for proc in self.procs:
            proc.stop(20)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    ws = Workers(tmp_path)
    yield ws
    ws.stop_all()


def streams_settings(settings: Settings, **heat: object) -> Settings:
    """Short intervals for tests: flush and commit every 0.2 s."""
    values = {"heat_flush_interval_s": 0.2, "heat_metrics_interval_s": 1.0, "metrics_interval_s": 1.0,
              "heat_window_s": 3600,
              "heat_min_clients": 2, **heat}
    return settings.model_copy(update=values)


def changelog_meta(settings: Settings) -> dict[int, int]:
    """partition -> offset its durable state holds (the meta records of the heat changelog)."""
    import orjson

    topic = settings.topic_prefix + settings.app_id + "-heat-changelog"
    out: dict[int, int] = {}
    for m in read_topic(settings.kafka_bootstrap, topic, timeout=10):
        key = (m.key() or b"").decode()
        if key.startswith("m:") and m.value():
            out[int(key[2:])] = orjson.loads(m.value())["o"]
    return out


def last_offsets(settings: Settings) -> dict[int, int]:
    """partition -> offset of the last message now in `requests`."""
    out: dict[int, int] = {}
    for m in read_topic(settings.kafka_bootstrap, settings.topic(contract.REQUESTS), timeout=10):
        out[m.partition()] = max(out.get(m.partition(), -1), m.offset())
    return out


def committed(settings: Settings) -> dict[int, int]:
    """partition -> offset the streams worker's group has committed on `requests` (-1: none)."""
    from confluent_kafka import Consumer, TopicPartition

    topic = settings.topic(contract.REQUESTS)
    cons = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": settings.topic_prefix + settings.app_id,
                     "enable.auto.commit": False})
    try:
        parts = [TopicPartition(topic, p) for p in range(settings.kafka_partitions)]
        return {tp.partition: tp.offset for tp in cons.committed(parts, timeout=10)}
    finally:
        cons.close()


def expected_hot(settings: Settings) -> list[HotUrl]:
    """What the pure core admits on the `requests` topic as it is now (message by message)."""
    from streams.heat import PartitionHeat
    from streams.rules import rules_from_settings

    rules = rules_from_settings(settings)
    parts: dict[int, PartitionHeat] = {}
    out = []
    msgs = read_topic(settings.kafka_bootstrap, settings.topic(contract.REQUESTS), timeout=10)
    for m in sorted(msgs, key=lambda m: (m.partition(), m.offset())):
        ph = parts.setdefault(m.partition(), PartitionHeat(m.partition(), rules))
        out.extend(ph.fold(m.offset(), contract.decode(m.value(), RequestBatch).events).hot)
    return out
