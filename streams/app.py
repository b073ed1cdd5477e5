"""The Faust app: consumes `requests` batches, keeps heat per key in a table, emits `hot-urls`.

Messages are raw bytes decoded by the contract (not Faust records): a batch of events costs
one decode, and the table is written once per distinct key per batch. The table's changelog
makes the state survive restarts; undecodable messages go to `dead-letter`.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import faust

from heatcache import contract
from heatcache.contract import DecodeError, RequestBatch
from heatcache.lifecycle import announce_ready
from heatcache.settings import Settings
from streams.heat import PartitionHeat, meta_key
from streams.rules import rules_from_settings

log = logging.getLogger(__name__)


def make_app(settings: Settings, bootstrap: str) -> tuple[faust.App, Counter[str]]:
    """Build the Faust app for these settings (no module-global app: tests build their own)."""
    parts = settings.kafka_partitions
    app = faust.App(
        settings.topic_prefix + settings.app_id,
        broker=",".join(f"kafka://{b}" for b in bootstrap.split(",")),
        store="memory://",
        web_enabled=False,
        topic_partitions=parts,
        topic_replication_factor=1,
        datadir=str((settings.state_dir / "faust").resolve()),
        consumer_auto_offset_reset="earliest",
        broker_commit_every=100,
        broker_commit_interval=1.0,
        stream_wait_empty=False,
        producer_compression_type="lz4",
    )
    rules = rules_from_settings(settings)
    parts_heat: dict[int, PartitionHeat] = {}
    requests = app.topic(settings.topic(contract.REQUESTS), key_serializer="raw", value_serializer="raw",
                         partitions=parts)
    hot_topic = app.topic(settings.topic(contract.HOT_URLS), key_serializer="raw", value_serializer="raw")
    dead = app.topic(settings.topic(contract.DEAD_LETTER), key_serializer="raw", value_serializer="raw")
    table = app.Table("heat", default=None, partitions=parts, key_type=bytes, value_type=bytes)

    def load(key: str) -> bytes | None:
        return table.get(key.encode())

    counters: Counter[str] = Counter()

    @app.agent(requests, name="heat")
    async def heat(stream: faust.StreamT[Any]) -> None:
        async for event in stream.events():
            msg = event.message
            try:
                batch = contract.decode(event.value, RequestBatch)
            except DecodeError as exc:
                counters["dead-letter"] += 1
                log.warning("dead-letter %s[%s]@%s: %s", msg.topic, msg.partition, msg.offset, exc)
                await dead.send(key=event.key, value=contract.dead_letter_value(
                    msg.topic, msg.partition, msg.offset, str(exc), event.value))
                continue
            counters["batches"] += 1
            counters["events"] += len(batch.events)
            ph = parts_heat.get(msg.partition)
            if ph is None:
                ph = parts_heat[msg.partition] = PartitionHeat(msg.partition, rules, load=load)
                ph.restore_meta(load(meta_key(msg.partition)))
            result = ph.fold(msg.offset, batch.events)
            counters["late"] += result.late
            for key, value in ph.take_dirty():
                if value is None:
                    table.pop(key.encode(), None)
                else:
                    table[key.encode()] = value
                counters["table-writes"] += 1
            for hot in result.hot:
                counters["hot"] += 1
                log.info("hot: %s (%d clients, %d requests)", hot.cache_key, hot.clients, hot.heat)
                await hot_topic.send(key=hot.cache_key.encode(), value=contract.encode(hot))

    announced = False

    @app.timer(0.5)
    async def ready() -> None:
        nonlocal announced
        if not announced and app.consumer.assignment():
            announced = True
            announce_ready("streams")

    return app, counters


def run(settings: Settings, bootstrap: str, loglevel: str = "info") -> None:
    """Run the app in a Faust worker until SIGTERM/SIGINT (the worker stops cleanly on both)."""
    app, _ = make_app(settings, bootstrap)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
