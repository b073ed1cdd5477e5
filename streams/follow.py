"""Follows the compacted `cache-events` topic for the streams worker (a thread, confluent-kafka).

Every worker reads every partition from the beginning (no consumer group): `cache-events` is
keyed by cache key, not co-partitioned with `requests`, and each worker must know the state of
the keys it owns. Decoded events wait in a queue the worker drains on its loop; ``ready`` is set
once the partitions' ends at start-up were reached (the compacted history is known).
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, TopicPartition

from heatcache import contract
from heatcache.contract import CacheEvent, DecodeError
from heatcache.kafkautil import assign_from_beginning

log = logging.getLogger(__name__)


class CacheFollower(threading.Thread):
    """Reads `cache-events` into ``queue`` as (cache_key, state, ts) tuples."""

    def __init__(self, bootstrap: str, topic: str, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(name="cache-events", daemon=True)
        self.topic = topic
        self.queue: collections.deque[tuple[str, str, float]] = collections.deque()
        self.ready = threading.Event()
        self.bad = 0
        self._stop = threading.Event()
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "heatcache-streams-cache",
                                   "enable.auto.commit": False, "enable.partition.eof": True,
                                   "auto.offset.reset": "earliest",
                                   **(config or {})})  # Kafka TLS: kafkautil.client_config(settings)

    def run(self) -> None:
        cons = self._consumer
        try:
            parts = assign_from_beginning(cons, self.topic)
            pending = set()
            for p in parts:
                low, high = cons.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)
                if high > low:
                    pending.add(p)
            if not pending:
                self.ready.set()
            while not self._stop.is_set():
                msg = cons.poll(0.2)
                if msg is None:
                    continue
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(msg.partition() or 0)
                        if not pending:
                            self.ready.set()
                    continue
                if msg.value() is None:  # a tombstone: the key's history is gone
                    continue
                try:
                    ev = contract.decode(msg.value(), CacheEvent)
                except DecodeError as exc:
                    self.bad += 1  # not ours to dead-letter: the fetcher's consumers report it
                    log.debug("undecodable cache event at %s: %s", msg.offset(), exc)
                    continue
                self.queue.append((ev.cache_key, ev.state, ev.ts))
        except Exception:  # keep the worker alive; it reconnects on its next start
            log.exception("cache-events follower stopped")
        finally:
            cons.close()

    def stop(self) -> None:
        self._stop.set()
