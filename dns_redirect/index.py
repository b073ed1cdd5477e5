"""What is cached, rebuilt from the compacted `cache-events` topic: a pure index plus the thread
that keeps it current."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from heatcache import contract
from heatcache.cachekey import key_host
from heatcache.contract import CacheEvent, DecodeError
from heatcache.kafkautil import assign_from_beginning

log = logging.getLogger(__name__)


class CacheIndex:
    """cache_key -> cached object, and host -> number of cached objects (pure, no I/O)."""

    def __init__(self) -> None:
        self.objects: dict[str, CacheEvent] = {}
        self.hosts: Counter[str] = Counter()
        self.unsteered_at: dict[str, float] = {}  # host -> when its last object went away
        self.version = 0  # bumped on every change: answer memos keyed on it stay correct

    def apply(self, event: CacheEvent) -> None:
        self.version += 1
        old = self.objects.pop(event.cache_key, None)
        if old is not None:
            self._drop_host(key_host(old.cache_key))
        if event.state == "cached":
            self.objects[event.cache_key] = event
            host = key_host(event.cache_key)
            self.hosts[host] += 1
            self.unsteered_at.pop(host, None)

    def remove(self, cache_key: str) -> None:
        """A tombstone (null value) on the compacted topic."""
        self.version += 1
        old = self.objects.pop(cache_key, None)
        if old is not None:
            self._drop_host(key_host(cache_key))

    def _drop_host(self, host: str) -> None:
        self.hosts[host] -= 1
        if self.hosts[host] <= 0:
            del self.hosts[host]
            self.unsteered_at[host] = time.monotonic()

    def recently_steered(self, host: str, grace_s: float, now: float | None = None) -> bool:
        """True while clients may still hold a DNS answer pointing here (within ``grace_s``)."""
        since = self.unsteered_at.get(host.lower().rstrip("."))
        return since is not None and (time.monotonic() if now is None else now) - since < grace_s

    def is_steered(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts

    def get(self, cache_key: str) -> CacheEvent | None:
        return self.objects.get(cache_key)


class CacheEventsFollower(threading.Thread):
    """Reads `cache-events` from the beginning, then follows it; ``ready`` once caught up."""

    def __init__(self, bootstrap: str, topic: str, index: CacheIndex,
                 on_bad: Callable[[Message, str], None] | None = None) -> None:
        super().__init__(name="cache-events", daemon=True)
        self.topic = topic
        self.on_bad = on_bad  # the error policy's dead-letter (heatcache dns/edge pass one)
        self.index = index
        self.ready = threading.Event()
        self.stopping = threading.Event()
        self.errors = 0
        self.consumer = Consumer({
            "bootstrap.servers": bootstrap,
            "group.id": f"heatcache-follower-{uuid.uuid4()}",  # never commits: always rebuilds
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        })

    def run(self) -> None:
        parts = assign_from_beginning(self.consumer, self.topic)
        # Caught up once every partition reached the end it had when we started.
        pending = {p for p in parts if self._has_data(p)}
        if not pending:
            self.ready.set()
        try:
            while not self.stopping.is_set():
                msg = self.consumer.poll(0.2)
                if msg is None:
                    continue
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(msg.partition())
                        if not pending:
                            self.ready.set()
                    else:
                        log.warning("cache-events: %s", err)
                    continue
                key = (msg.key() or b"").decode("utf-8", "replace")
                if msg.value() is None:
                    self.index.remove(key)
                    continue
                try:
                    self.index.apply(contract.decode(msg.value(), CacheEvent))
                except Exception as exc:
                    self.errors += 1
                    reason = str(exc) if isinstance(exc, DecodeError) else f"{type(exc).__name__}: {exc}"
                    log.warning("ignoring bad cache event at offset %s: %s", msg.offset(), reason)
                    if self.on_bad is not None:
                        self.on_bad(msg, reason)
        finally:
            self.consumer.close()

    def _has_data(self, partition: int) -> bool:
        low, high = self.consumer.get_watermark_offsets(TopicPartition(self.topic, partition), timeout=10)
        return bool(high > low)

    def wait_ready(self, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready.wait(0.2):
                return True
        return False

    def stop(self) -> None:
        self.stopping.set()
