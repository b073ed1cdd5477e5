"""The streams shell's reading of `cache-events` (Stage.drain_cache_events), without a broker:
the follower's queue filled by hand, the partitions' heat the pure PartitionHeat."""

from __future__ import annotations

import collections
from typing import Any, cast

from heatcache import contract
from heatcache.contract import RequestEvent
from heatcache.settings import Settings
from streams.app import Stage
from streams.heat import PartitionHeat
from streams.rules import rules_from_settings


class _Queue:
    def __init__(self, *events: tuple[str, str, float]) -> None:
        self.queue = collections.deque(events)


def ev(key: str, client: str, ts: float) -> RequestEvent:
    host = key.split("/")[2]
    return RequestEvent(ts, client, "GET", host, "/" + key.split("/", 3)[3], key, key)


def test_a_failure_read_for_another_workers_partition_keeps_its_back_off(base_settings: Settings) -> None:
    """A `failed` event for a key of a partition this worker does not own is remembered with the
    event's own time: after a reassignment brings the partition here, the key is retried once
    its back-off (60 s after the failure) has passed, not at its next request."""
    settings = base_settings.model_copy(update={"heat_window_s": 3600, "heat_min_clients": 2})
    rules = rules_from_settings(settings)
    stage = Stage(settings, rules, cast(Any, None), cast(Any, None), {})
    key = "http://moved.example/a.bin"
    p = contract.bucket_of(key, settings.kafka_partitions)
    stage.follower = cast(Any, _Queue((key, "failed", 1000.0)))
    stage.drain_cache_events()  # partition p is not ours (yet)
    assert stage.cache[key].state == "failed" and stage.cache[key].ts == 1000.0
    # the partition is assigned to this worker (its heat restored empty here)
    ph = stage.parts[p] = PartitionHeat(p, rules, cache=stage.cache, compiled=settings.heat_compiled)
    early = ph.fold(0, [ev(key, c, 1010.0) for c in "abc"])
    assert early.hot == [], early.hot  # 10 s after the failure: still backing off
    late = ph.fold(1, [ev(key, "d", 1061.0)])
    assert [(h.cache_key, h.reason) for h in late.hot] == [(key, "retry-failed")]
