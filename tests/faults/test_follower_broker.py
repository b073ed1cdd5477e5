"""The edge's cache-events follower against a private broker that is not there at start, then
stopped and started again: the edge's runner health is degraded ("broker") while it is away, ok
again when it is back, the edge keeps serving its index meanwhile and picks up new events after
(the four per-stage copies of this loop died on the first broker error; now it is
heatcache.kafkautil.Follower)."""

from __future__ import annotations

from pathlib import Path

from confluent_kafka import Producer

from heatcache import contract
from heatcache.contract import CacheEvent
from heatcache.lab import NODE_IP, lab_settings
from heatcache.netutil import free_port
from heatcache.services.kafka import EmbeddedKafka, ensure_topics
from heatcache.settings import Settings
from tests.faults.stackproc import Proc, edge_objects, runner_health, wait_for


def _cached(settings: Settings, name: str) -> None:
    key = f"http://steered.lab.test/{name}"
    ev = CacheEvent(key, "cached", url=key, host="steered.lab.test", path=f"objects/aa/{name}", size=3, ts=1.0)
    prod = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    prod.produce(settings.topic(contract.CACHE_EVENTS), key=key.encode(), value=contract.encode(ev))
    assert prod.flush(15) == 0


def test_edge_health_follows_the_broker(base_settings: Settings, tmp_path: Path) -> None:
    port, metrics = free_port(), free_port()
    settings = lab_settings(base_settings, tmp_path / "state", free_port(NODE_IP), "127.0.0.1:53",
                            kafka_bootstrap=f"127.0.0.1:{port}", metrics_port=metrics, metrics_interval_s=0)
    broker = EmbeddedKafka(tmp_path / "kafka", port=port, heap_mb=256)
    edge = Proc(settings, "edge")  # before the broker exists: it must wait, not exit
    try:
        wait_for(lambda: runner_health(metrics).get("health") == "degraded", 60, "the edge to report the broker lost")
        assert "broker" in str(runner_health(metrics)["reason"]) and edge.proc.poll() is None
        broker.start()
        ensure_topics(broker.bootstrap, settings)
        _cached(settings, "a.bin")
        edge.wait_line("heatcache-ready edge")
        wait_for(lambda: edge_objects(settings) == 1, 30, "the edge to index the first event")
        wait_for(lambda: runner_health(metrics).get("health") == "ok", 30, "health ok with the broker up")

        broker.stop()
        wait_for(lambda: runner_health(metrics).get("health") == "degraded", 60, "degraded once the broker is gone")
        assert edge_objects(settings) == 1  # still serving what it knows

        broker.start()
        wait_for(lambda: runner_health(metrics).get("health") == "ok", 60, "ok again once the broker is back")
        _cached(settings, "b.bin")
        wait_for(lambda: edge_objects(settings) == 2, 30, "the edge to follow new events after the outage")
    finally:
        assert edge.finish() == 0
        broker.stop()
