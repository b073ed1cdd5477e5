"""Batching producer: RequestEvents grouped per partition bucket, one Kafka message per batch."""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from heatcache import contract
from heatcache.contract import RequestBatch, RequestEvent

log = logging.getLogger(__name__)
_URL_CAP, _KEY_CAP, _RANGE_CAP, _UA_CAP = contract.MAX_URL_LEN, contract.MAX_KEY_LEN, *contract.REQUEST_FIELD_CAPS[-2:]


class BatchPublisher:
    """Collects events per bucket; a bucket is sent when full or when it has lingered too long.

    The bucket is the cache key's CRC-32 modulo the topic's partitions and is used as the
    partition itself, so one key always lands on one partition (and one streams worker).
    """

    def __init__(self, producer: Producer, topic: str, partitions: int, max_events: int, linger_s: float,
                 counters: Counter[str]) -> None:
        self.producer = producer
        self.topic = topic
        self.partitions = partitions
        self.max_events = max_events
        self.linger_s = linger_s
        self.counters = counters
        self._pending: dict[int, list[RequestEvent]] = {}
        self._since: dict[int, float] = {}

    def add(self, event: RequestEvent) -> None:
        if (len(event.url) > _URL_CAP or len(event.cache_key) > _KEY_CAP or len(event.path) > _URL_CAP
                or len(event.range) > _RANGE_CAP or len(event.ua_class) > _UA_CAP):
            self.counters["drop.oversize"] += 1  # decoding would refuse the whole batch for it
            return
        bucket = contract.bucket_of(event.cache_key, self.partitions)
        items = self._pending.setdefault(bucket, [])
        if not items:
            self._since[bucket] = time.monotonic()
        items.append(event)
        if len(items) >= self.max_events:
            self._send(bucket)

    def tick(self) -> None:
        """Send buckets that lingered long enough; serve delivery callbacks."""
        now = time.monotonic()
        for bucket in [b for b, t in self._since.items() if now - t >= self.linger_s]:
            self._send(bucket)
        self.producer.poll(0)

    def flush(self, timeout: float = 30.0) -> int:
        for bucket in list(self._pending):
            self._send(bucket)
        return int(self.producer.flush(timeout))

    def _send(self, bucket: int) -> None:
        events = self._pending.pop(bucket, [])
        self._since.pop(bucket, None)
        if not events:
            return
        value = contract.encode(RequestBatch(bucket=bucket, events=tuple(events)))
        while True:
            try:
                self.producer.produce(self.topic, value=value, key=str(bucket).encode(), partition=bucket,
                                      on_delivery=self._delivered(len(events)))
                break
            except BufferError:
                # The local queue is full: wait for deliveries instead of dropping events.
                self.counters["produce.queue-full"] += 1
                self.producer.poll(0.1)
        self.counters["batches"] += 1

    def _delivered(self, n: int) -> Any:
        def callback(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                self.counters["produce.errors"] += 1
                self.counters["produce.lost-events"] += n
                log.error("delivery failed for %d events: %s", n, err)
            else:
                self.counters["published"] += n

        return callback
