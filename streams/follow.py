"""Follows the compacted `cache-events` topic for the streams worker (a thread, confluent-kafka).

Every worker reads every partition from the beginning (no consumer group): `cache-events` is
keyed by cache key, not co-partitioned with `requests`, and each worker must know the state of
the keys it owns. Decoded events wait in a queue the worker drains on its loop; ``ready`` is set
once the partitions' ends at start-up were reached (the compacted history is known).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Mapping
from typing import Any

from confluent_kafka import Message

from heatcache import contract
from heatcache.contract import CacheEvent, DecodeError
from heatcache.kafkautil import Follower, HealthLike

log = logging.getLogger(__name__)


class CacheFollower(Follower):
    """Reads `cache-events` into ``queue`` as (cache_key, state, ts) tuples (start-up waits and
    broker loss: heatcache.kafkautil.Follower)."""

    def __init__(self, bootstrap: str, topic: str, config: Mapping[str, Any] | None = None,
                 health: HealthLike | None = None) -> None:
        # config: the client security settings (Kafka TLS), kafkautil.client_config(settings);
        # health: the runner's (degraded("broker") while no broker answers)
        super().__init__(bootstrap, [topic], name="cache-events", group_prefix="heatcache-streams-cache", batch=500,
                         config=config, health=health)
        self.topic = topic
        self.queue: collections.deque[tuple[str, str, float]] = collections.deque()
        self.bad = 0

    def handle(self, msgs: list[Message], caught_up: bool) -> None:
        for msg in msgs:
            if msg.value() is None:  # a tombstone: the key's history is gone
                continue
            try:
                ev = contract.decode(msg.value(), CacheEvent)
            except DecodeError as exc:
                self.bad += 1  # not ours to dead-letter: the fetcher's consumers report it
                log.debug("undecodable cache event at %s: %s", msg.offset(), exc)
                continue
            self.queue.append((ev.cache_key, ev.state, ev.ts))
