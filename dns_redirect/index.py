"""What is cached, rebuilt from the compacted `cache-events` topic: a pure index plus the thread
that reads the topic and hands each change to the serving loop, the index's only writer."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from heatcache import contract
from heatcache.cachekey import key_host
from heatcache.contract import CacheEvent, DecodeError
from heatcache.kafkautil import assign_from_beginning

log = logging.getLogger(__name__)


class CacheIndex:
    """cache_key -> cached object, and host -> number of cached objects (pure, no I/O).

    One writer: the serving loop (``CacheEventsFollower`` hands it every change). Readers on the
    same loop memoize answers by ``version``, so the version moves only once a change is complete:
    a reader that sees the new version sees the new state."""

    def __init__(self) -> None:
        self.objects: dict[str, CacheEvent] = {}
        self.hosts: Counter[str] = Counter()
        self.unsteered_at: dict[str, float] = {}  # host -> when its last object went away
        self.version = 0  # bumped after every change: answer memos keyed on it stay correct

    def apply(self, event: CacheEvent, now: float | None = None) -> None:
        old = self.objects.pop(event.cache_key, None)
        if old is not None:
            self._drop_host(key_host(old.cache_key), now)
        if event.state == "cached":
            self.objects[event.cache_key] = event
            host = key_host(event.cache_key)
            self.hosts[host] += 1
            self.unsteered_at.pop(host, None)
        self.version += 1

    def remove(self, cache_key: str, now: float | None = None) -> None:
        """A tombstone (null value) on the compacted topic."""
        old = self.objects.pop(cache_key, None)
        if old is not None:
            self._drop_host(key_host(cache_key), now)
        self.version += 1

    def apply_all(self, changes: list[tuple[str, CacheEvent | None]], now: float | None = None) -> None:
        """Several changes in a row: (key, event), or (key, None) for a tombstone."""
        for key, event in changes:
            if event is None:
                self.remove(key, now)
            else:
                self.apply(event, now)

    def _drop_host(self, host: str, now: float | None) -> None:
        self.hosts[host] -= 1
        if self.hosts[host] <= 0:
            del self.hosts[host]
            self.unsteered_at[host] = time.monotonic() if now is None else now

    def recently_steered(self, host: str, grace_s: float, now: float | None = None) -> bool:
        """True while clients may still hold a DNS answer pointing here (within ``grace_s``)."""
        since = self.unsteered_at.get(host.lower().rstrip("."))
        return since is not None and (time.monotonic() if now is None else now) - since < grace_s

    def is_steered(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts

    def get(self, cache_key: str) -> CacheEvent | None:
        return self.objects.get(cache_key)


Change = tuple[str, CacheEvent | None]
DeadLetter = Callable[[Message, str], None]


def decode_change(msg: Message) -> Change:
    """One `cache-events` record as an index change; DecodeError (with the reason) if it is not
    one: a null value is a tombstone, anything else must be a CacheEvent for the record's key."""
    raw_key = msg.key()
    if raw_key is None:
        raise DecodeError("record without a key")
    try:
        key = raw_key.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"key is not UTF-8: {exc}") from None
    value = msg.value()
    if value is None:
        return key, None
    event = contract.decode(value, CacheEvent)
    if event.cache_key != key:
        raise DecodeError(f"record key {key[:80]!r} is not the event's cache_key {event.cache_key[:80]!r}")
    return key, event


class CacheEventsFollower(threading.Thread):
    """Reads `cache-events` from the beginning, then follows it; ``ready`` once caught up.

    The thread only reads and decodes: every change is applied by ``loop`` (the server's), in
    order, so the index has a single writer and never changes under a query being answered.
    ``ready`` is set on the loop too, after the changes that preceded it. A record that does not
    decode goes to ``on_bad`` with the reason (the topic is compacted, so it would otherwise
    be met again at every start) and the follower goes on."""

    BATCH = 500

    def __init__(self, bootstrap: str, topic: str, index: CacheIndex, loop: asyncio.AbstractEventLoop,
                 on_bad: DeadLetter | None = None, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(name="cache-events", daemon=True)
        self.topic = topic
        self.index = index
        self.loop = loop
        self.on_bad = on_bad  # the error policy's dead-letter (heatcache dns/edge pass one)
        self.ready = threading.Event()
        self.stopping = threading.Event()
        self.errors = 0
        self.applied = 0  # changes applied on the loop (read there, or after a join)
        self.consumer = Consumer({
            "bootstrap.servers": bootstrap,
            "group.id": f"heatcache-follower-{uuid.uuid4()}",  # never commits: always rebuilds
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            **(config or {}),  # Kafka TLS: kafkautil.client_config(settings)
        })

    def _apply(self, changes: list[Change], caught_up: bool) -> None:  # on the loop
        self.index.apply_all(changes)
        self.applied += len(changes)
        if caught_up:
            self.ready.set()

    def _deliver(self, changes: list[Change], caught_up: bool) -> None:
        if not changes and not caught_up:
            return
        try:
            self.loop.call_soon_threadsafe(self._apply, changes, caught_up)
        except RuntimeError:  # the loop is closed: we are stopping
            self.stopping.set()

    def _start(self) -> set[int] | None:
        """Assign every partition from the beginning; the partitions holding data, to read up
        to their end before we are caught up. A broker not ready yet (a fresh topic has no
        leader for a moment, a restarting broker none at all) is waited for, never fatal."""
        delay = 0.2
        while not self.stopping.is_set():
            try:
                parts = assign_from_beginning(self.consumer, self.topic)
                return {p for p in parts if self._has_data(p)}
            except KafkaException as exc:
                log.warning("cache-events: not readable yet (%s), retrying in %.1fs", exc, delay)
                self.stopping.wait(delay)
                delay = min(5.0, delay * 2)
        return None

    def run(self) -> None:
        try:
            # Caught up once every partition reached the end it had when we started.
            pending = self._start()
            if pending is None:
                return
            announced = False
            if not pending:
                self._deliver([], True)
                announced = True
            while not self.stopping.is_set():
                changes: list[Change] = []
                first = self.consumer.poll(0.2)  # wait for one, then take what is already here
                if first is None:
                    continue
                for msg in [first, *self.consumer.consume(self.BATCH, 0)]:
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            pending.discard(msg.partition())
                        else:
                            log.warning("cache-events: %s", err)
                        continue
                    try:
                        changes.append(decode_change(msg))
                    except Exception as exc:  # whatever a record holds, the follower goes on
                        self.errors += 1
                        reason = str(exc) if isinstance(exc, DecodeError) else f"{type(exc).__name__}: {exc}"
                        log.warning("bad cache event at %s[%s]@%s: %s", msg.topic(), msg.partition(),
                                    msg.offset(), reason)
                        if self.on_bad is not None:
                            self.on_bad(msg, reason)
                caught_up = not pending and not announced
                announced = announced or caught_up
                self._deliver(changes, caught_up)
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
