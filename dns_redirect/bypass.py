"""Leak detection on the edge: follow `requests`, count what bypassed the steering, publish it.

The sniffer's events for a host that the edge's index steers are requests that went to an
origin address (the sniffer ignores the node's own traffic), so they bypassed the cache node.
The edge knows both halves of the ratio: those events (read from `requests`, a metric-only
follower that starts at the end and never commits) and what it served itself (HTTP hits and
misses, TLS connections). The pure part is heatcache.bypass; this is the I/O around it.

Published: per host on the `metrics` topic as the ``edge-top`` record (``bypass_ratio.<host>``,
``bypassed.<host>``, ``served.<host>``, ``bypassed.<host>@<network>``: host names are data, so
they are not in the stage's fixed field set), and in the declared metrics as the highest ratio
and the number of hosts above ``HEATCACHE_BYPASS_ALERT_RATIO`` (what an alert can use).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import OFFSET_END, Consumer, KafkaException, TopicPartition

from heatcache import contract
from heatcache.bypass import BypassMeter, high_bypass, max_ratio, record_fields
from heatcache.cachekey import key_host
from heatcache.contract import RequestBatch, RequestEvent
from heatcache.networks import NetworkNamer
from heatcache.settings import Settings

log = logging.getLogger(__name__)

RECORD = "edge-top"  # the `metrics` record with the per-host figures ("-top": not a stage of its own)


class RequestsFollower(threading.Thread):
    """Reads `requests` from its end on every partition and hands each batch's events to
    ``deliver`` on ``loop``. No group offsets: after a restart the window starts afresh, which a
    ratio over minutes tolerates. Undecodable batches are counted, not dead-lettered (streams,
    the topic's real consumer, dead-letters them once already)."""

    def __init__(self, bootstrap: str, topic: str, loop: asyncio.AbstractEventLoop,
                 deliver: Callable[[tuple[RequestEvent, ...]], None], counters: Counter[str],
                 config: dict[str, str] | None = None) -> None:
        super().__init__(name="bypass-requests", daemon=True)
        self.topic = topic
        self.loop = loop
        self.deliver = deliver
        self.counters = counters
        self.stopping = threading.Event()
        self.assigned = threading.Event()
        self.consumer = Consumer({
            "bootstrap.servers": bootstrap,
            "group.id": f"heatcache-bypass-{uuid.uuid4()}",  # never commits
            "enable.auto.commit": False,
            **(config or {}),  # the settings' Kafka security (TLS in k8s)
        })

    def _assign(self) -> bool:
        delay = 0.2
        while not self.stopping.is_set():
            try:
                md = self.consumer.list_topics(self.topic, timeout=10)
                meta = md.topics.get(self.topic)
                if meta is not None and meta.error is None and meta.partitions:
                    self.consumer.assign([TopicPartition(self.topic, p, OFFSET_END) for p in meta.partitions])
                    self.assigned.set()
                    return True
            except KafkaException as exc:
                log.warning("requests: not readable yet (%s)", exc)
            self.stopping.wait(delay)
            delay = min(5.0, delay * 2)
        return False

    def run(self) -> None:
        try:
            if not self._assign():
                return
            while not self.stopping.is_set():
                first = self.consumer.poll(0.2)
                if first is None:
                    continue
                events: list[RequestEvent] = []
                for msg in [first, *self.consumer.consume(500, 0)]:
                    if msg.error() is not None:
                        continue
                    try:
                        events.extend(contract.decode(msg.value(), RequestBatch).events)
                    except Exception:  # whatever a record holds, the follower goes on
                        self.counters["bypass.bad-batches"] += 1
                if events:
                    try:
                        self.loop.call_soon_threadsafe(self.deliver, tuple(events))
                    except RuntimeError:  # the loop is closed: we are stopping
                        return
        finally:
            self.consumer.close()

    def stop(self) -> None:
        self.stopping.set()


class BypassWatch:
    """Everything on the edge's loop: counts bypassed events of steered hosts, collects what the
    edge served, and turns both into figures every ``tick``."""

    def __init__(self, settings: Settings, is_steered: Callable[[str], bool], counters: Counter[str]) -> None:
        self.settings = settings
        self.is_steered = is_steered
        self.counters = counters
        self.meter = BypassMeter(settings.bypass_window_s)
        self.namer = NetworkNamer(settings.console_networks)
        self.unnamed = "other" if settings.client_id_raw else "pseudonymous"
        self.high: set[str] = set()
        self._tls_seen: dict[str, int] = {}
        self.last: dict[str, Any] = {}

    def network(self, client: str) -> str:
        """The client's named network; with pseudonymous client ids (the default) the sniffer
        publishes no address, so every bypass counts under "pseudonymous"."""
        return self.namer.name(client) or self.unnamed

    def on_events(self, events: Iterable[RequestEvent]) -> None:
        meter, steered = self.meter, self.is_steered
        for ev in events:
            host = ev.host.lower().rstrip(".")
            if steered(host):
                meter.bypassed(host, self.network(ev.client), ev.ts)
                self.counters["bypass.requests"] += 1

    def collect(self, now: float, served_keys: Counter[str], served_hosts: Counter[str],
                tls_hosts: dict[str, dict[str, int]] | None) -> None:
        """Fold what the edge served since the last call (the edge's counters are emptied)."""
        for key, n in served_keys.items():
            self.meter.served(key_host(key), now, n)
        served_keys.clear()
        for host, n in served_hosts.items():
            self.meter.served(host.lower().rstrip("."), now, n)
        served_hosts.clear()
        for host, fig in (tls_hosts or {}).items():  # cumulative per host: take the increase
            total = fig.get("connections", 0)
            new = total - self._tls_seen.get(host, 0)
            self._tls_seen[host] = total
            if new > 0:
                self.meter.served(host, now, new)

    def tick(self, now: float) -> dict[str, Any]:
        """The figures as of ``now``: updates the declared gauges, warns once per host going high,
        returns the ``edge-top`` record's fields."""
        s = self.settings
        figures = self.meter.figures(now)
        high = set(high_bypass(figures, s.bypass_alert_ratio, s.bypass_min_requests))
        for host in sorted(high - self.high):
            f = figures[host]
            log.warning("steering bypass: %s %.0f%% of %d requests went around the cache node (by network: %s)",
                        host, 100 * (f.ratio or 0), f.bypassed + f.served, f.networks)
        self.high = high
        self.counters["bypass.max-ratio"] = max_ratio(figures, s.bypass_min_requests)  # type: ignore[assignment]
        self.counters["bypass.high-hosts"] = len(high)
        self.last = record_fields(figures)
        return self.last
