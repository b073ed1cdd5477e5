"""The console's I/O: follows the Kafka topics into a :class:`~console.model.Model` and polls the
catalog and the edge's health; the page and `heatcache status` read snapshots of it.

Topics are read without a consumer group (assigned partitions, nothing committed): the
compacted ones (`cache-events`, `control`) from the beginning, the others from a day ago (the
longest savings window), found with ``offsets_for_times``.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import orjson
from confluent_kafka import OFFSET_END, Consumer, Message, TopicPartition

from console.model import CatalogRow, Model, sample_from, snapshot
from heatcache import contract
from heatcache.contract import CacheEvent, ControlEvent, DecodeError, FetchProgress, HotUrl
from heatcache.kafkautil import Follower, client_config
from heatcache.settings import Settings

log = logging.getLogger(__name__)

HISTORY_S = 86400  # the longest window the page shows
HOST_HEAT = "host-heat"  # streams' host heat topic, when it exists (read if present)


def open_catalog_rows(settings: Settings) -> Callable[[], list[CatalogRow]]:
    """A function that reads the catalog's rows now (the adapter in front of the catalog module)."""
    from cachestore.catalog import open_catalog

    holder: dict[str, Any] = {}

    def read() -> list[CatalogRow]:
        if "catalog" not in holder:
            holder["catalog"] = open_catalog(settings.catalog)
        rows = holder["catalog"].all()
        return [CatalogRow(r.cache_key, r.url, r.host, int(r.size or 0), r.state, int(r.hits or 0),
                           float(r.fetched_at or 0), float(r.last_hit or 0)) for r in rows]

    def close() -> None:
        if "catalog" in holder:
            holder.pop("catalog").close()

    read.close = close  # type: ignore[attr-defined]
    return read


def edge_health(settings: Settings, timeout: float = 2.0) -> dict[str, Any]:
    """The edge's health answer (its counters), or {} when it does not answer."""
    try:
        with urllib.request.urlopen(settings.health_url, timeout=timeout) as resp:
            body = orjson.loads(resp.read())
            return body if isinstance(body, dict) else {}
    except (OSError, ValueError):
        return {}


class Feed:
    """Keeps a Model current: one thread on Kafka, one polling the catalog and the edge."""

    def __init__(self, settings: Settings, bootstrap: str, poll_s: float = 2.0) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.poll_s = poll_s
        self.model = Model()
        self.lock = threading.Lock()
        self.ready = threading.Event()  # the topics were read up to where they were at start
        self.polled = threading.Event()  # the catalog and the edge were polled once
        self.stopping = threading.Event()
        self.errors = 0
        self.changed = threading.Event()
        self._threads = [self._follower(),
                         threading.Thread(target=self._poll_loop, name="console-poll", daemon=True)]
        self.read_catalog = open_catalog_rows(settings)

    def start(self) -> Feed:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        for t in self._threads:
            t.join(10)
        self.read_catalog.close()  # type: ignore[attr-defined]

    def wait_ready(self, timeout: float = 30.0) -> bool:
        return self.ready.wait(timeout) and self.polled.wait(timeout)

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        s = self.settings
        with self.lock:
            return snapshot(self.model, time.time() if now is None else now, int(getattr(s, "cache_max_bytes", 0) or 0),
                            [n.partition("=")[0] for n in s.console_networks], s.never_steer_hosts)

    # -- Kafka
    def _topics(self) -> dict[str, str]:
        s = self.settings
        names = {s.topic(contract.METRICS): contract.METRICS, s.topic(contract.HOT_URLS): contract.HOT_URLS,
                 s.topic(contract.CACHE_EVENTS): contract.CACHE_EVENTS,
                 s.topic(contract.FETCH_PROGRESS): contract.FETCH_PROGRESS,
                 s.topic(contract.CONTROL): contract.CONTROL,
                 (s.topic(HOST_HEAT) if hasattr(s, "topic_host_heat") else s.topic_prefix + HOST_HEAT): HOST_HEAT}
        return names

    def _follower(self) -> Follower:
        """The topics from the beginning (compacted ones) or from HISTORY_S ago, via the one
        follower (start-up waits, broker loss, partition-EOF bookkeeping: heatcache.kafkautil)."""
        names = self._topics()
        feed = self

        class FeedFollower(Follower):
            def starts(self, consumer: Consumer, parts: list[TopicPartition]) -> list[TopicPartition]:
                since_ms = int((time.time() - HISTORY_S) * 1000)
                for tp in parts:
                    if names[tp.topic] not in (contract.CACHE_EVENTS, contract.CONTROL):
                        tp.offset = since_ms
                timed = [tp for tp in parts if tp.offset >= 0]
                if timed:
                    found = {(tp.topic, tp.partition): tp.offset
                             for tp in consumer.offsets_for_times(timed, timeout=10)}
                    for tp in timed:
                        off = found.get((tp.topic, tp.partition), OFFSET_END)
                        tp.offset = off if off >= 0 else OFFSET_END
                return parts

            def handle(self, msgs: list[Message], caught_up: bool) -> None:
                for msg in msgs:
                    feed.apply(names.get(msg.topic() or "", ""), msg)

            def on_caught_up(self) -> None:
                feed.ready.set()

        return FeedFollower(self.bootstrap, list(names), name="console-kafka", group_prefix="heatcache-console",
                            stopping=self.stopping, batch=200, config=client_config(self.settings))

    def apply(self, logical: str, msg: Message) -> None:
        raw = msg.value()
        with self.lock:
            try:
                if logical == contract.CACHE_EVENTS:
                    if raw is None:
                        self.model.forget_cache_key((msg.key() or b"").decode("utf-8", "replace"))
                    else:
                        self.model.apply_cache_event(contract.decode(raw, CacheEvent))
                elif logical == contract.HOT_URLS:
                    self.model.apply_hot(contract.decode(raw, HotUrl))
                elif logical == contract.FETCH_PROGRESS:
                    self.model.apply_progress(contract.decode(raw, FetchProgress))
                elif logical == contract.CONTROL and raw is not None:
                    self.model.apply_control(contract.decode(raw, ControlEvent))
                elif logical == contract.METRICS and raw:
                    record = orjson.loads(raw)
                    if isinstance(record, dict):
                        self.model.apply_metrics(record)
                elif logical == HOST_HEAT and raw:
                    record = orjson.loads(raw)
                    if isinstance(record, dict):
                        self.model.apply_host_heat(record)
            except (DecodeError, orjson.JSONDecodeError):
                self.errors += 1  # the stages dead-letter bad records; the console only skips them
        self.changed.set()

    # -- catalog and edge
    def _poll_loop(self) -> None:
        while not self.stopping.is_set():
            self.poll_once()
            self.stopping.wait(self.poll_s)

    def poll_once(self) -> None:
        try:
            rows = self.read_catalog()
        except Exception as exc:  # the database may be restarting: keep the last rows
            self.errors += 1
            log.warning("console: catalog read failed: %s", exc)
            rows = None
        edge = edge_health(self.settings)
        now = time.time()
        with self.lock:
            if rows is not None:
                self.model.catalog = rows
            self.model.edge = edge
            self.model.edge_checked = now
            self.model.add_sample(sample_from(self.model.catalog, edge, self.model.metrics, now,
                                              self.model.prefetched_bytes))
        self.polled.set()
        self.changed.set()
