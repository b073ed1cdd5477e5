"""Every stage's health follows a private broker that is not there at start, then stopped and
started again: the edge's cache-events follower (degraded "broker" while it is away, ok again
when it is back, serving its index meanwhile and picking up new events after: the four per-stage
copies of this loop died on the first broker error; now it is heatcache.kafkautil.Follower), and
in the same broker cycle the fetcher (its consumer/producer through the runner's error_cb and
broker probe, its control follower), the streams worker (its cache-events follower) and the
sniffer (its producer: before the probe it stayed degraded for good). Plus a follower started
right as the restarted broker opens its port (NOT_LEADER_FOR_PARTITION, about every other time)."""

from __future__ import annotations

from pathlib import Path

from confluent_kafka import Producer

from heatcache import contract
from heatcache.contract import CacheEvent
from heatcache.kafkautil import Follower
from heatcache.lab import NODE_IP, lab_settings
from heatcache.netutil import free_port
from heatcache.services.aria2 import Aria2Daemon
from heatcache.services.kafka import EmbeddedKafka, ensure_topics
from heatcache.settings import Settings
from tests.faults.stackproc import Proc, edge_objects, runner_health, wait_for


def _cached(settings: Settings, name: str) -> None:
    key = f"http://steered.lab.test/{name}"
    ev = CacheEvent(key, "cached", url=key, host="steered.lab.test", path=f"objects/aa/{name}", size=3, ts=1.0)
    prod = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    prod.produce(settings.topic(contract.CACHE_EVENTS), key=key.encode(), value=contract.encode(ev))
    assert prod.flush(15) == 0


def _all(ports: dict[str, int], state: str) -> bool:
    health = {stage: runner_health(port) for stage, port in ports.items()}
    return all(h.get("health") == state and (state == "ok" or "broker" in str(h.get("reason")))
               for h in health.values())


def test_every_stage_health_follows_the_broker(base_settings: Settings, tmp_path: Path, aria2: Aria2Daemon) -> None:
    port, metrics = free_port(), free_port()
    settings = lab_settings(base_settings, tmp_path / "state", free_port(NODE_IP), "127.0.0.1:53",
                            kafka_bootstrap=f"127.0.0.1:{port}", metrics_port=metrics, metrics_interval_s=0,
                            aria2_rpc_port=aria2.port, aria2_secret=aria2.secret)
    broker = EmbeddedKafka(tmp_path / "kafka", port=port, heap_mb=256, fast_start=True)
    edge = Proc(settings, "edge")  # before the broker exists: it must wait, not exit
    others: dict[str, Proc] = {}
    ports = {"edge": metrics}
    try:
        wait_for(lambda: runner_health(metrics).get("health") == "degraded", 60, "the edge to report the broker lost")
        assert "broker" in str(runner_health(metrics)["reason"]) and edge.proc.poll() is None
        broker.start()
        ensure_topics(broker.bootstrap, settings)
        for stage in ("fetch", "streams", "sniff"):  # these start with their broker there
            ports[stage] = free_port()
            others[stage] = Proc(settings, stage, env={"HEATCACHE_METRICS_PORT": str(ports[stage])})
        _cached(settings, "a.bin")
        edge.wait_line("heatcache-ready edge")
        wait_for(lambda: edge_objects(settings) == 1, 30, "the edge to index the first event")
        for proc in others.values():
            proc.wait_line("heatcache-ready")
        wait_for(lambda: _all(ports, "ok"), 60, f"every stage ok with the broker up: {_states(ports)}")

        broker.stop(hold=True)  # its port kept: the stages keep its address
        wait_for(lambda: _all(ports, "degraded"), 60, f"every stage degraded (broker) once the broker is gone: "
                 f"{_states(ports)}")
        assert edge_objects(settings) == 1  # still serving what it knows
        assert all(p.proc.poll() is None for p in (edge, *others.values()))  # no stage exits for it

        broker.start()
        # a follower started the moment the restarted broker opens its port: its first watermark
        # query gets NOT_LEADER_FOR_PARTITION about every other time (the broker has not taken
        # up its partitions' leadership yet; measured 3 of 5 restarts), which it must retry
        seen: list[bytes] = []
        late = Follower(broker.bootstrap, [settings.topic(contract.CACHE_EVENTS)], name="late", require_topics=True,
                        handle=lambda msgs, _caught_up: seen.extend(m.key() or b"" for m in msgs))
        late.start()
        assert late.wait_ready(60) and seen == [b"http://steered.lab.test/a.bin"], (seen, late.restarts)
        late.stop()
        late.join(5)
        wait_for(lambda: _all(ports, "ok"), 60, f"every stage ok again once the broker is back: {_states(ports)}")
        _cached(settings, "b.bin")
        wait_for(lambda: edge_objects(settings) == 2, 30, "the edge to follow new events after the outage")
    finally:
        codes = {stage: p.finish() for stage, p in [*others.items(), ("edge", edge)]}
        broker.stop()
        assert codes == dict.fromkeys(codes, 0)


def _states(ports: dict[str, int]) -> dict[str, object]:
    return {stage: runner_health(port) for stage, port in ports.items()}
