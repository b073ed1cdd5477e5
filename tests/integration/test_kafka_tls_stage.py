"""One real stage process on the session broker's mTLS listener, with nothing but the
HEATCACHE_KAFKA_SECURITY_PROTOCOL/SSL_* settings (as k8s runs it): `heatcache edge` consumes
`cache-events` (its follower indexes an event produced over TLS) and produces (its runner's
`metrics` snapshot, read back over TLS), and its health stays ok (no broker errors). The
guard test (tests/heatcache/test_kafka_client_config.py) only reads the code; this runs it."""

from __future__ import annotations

import json
import urllib.request

import orjson

from heatcache import contract
from heatcache.contract import CacheEvent
from heatcache.kafkautil import producer, read_topic
from heatcache.lab import NODE_IP, lab_settings
from heatcache.netutil import free_port
from heatcache.settings import Settings
from tests.faults.stackproc import Proc, wait_for


def _get(url: str) -> dict[str, object]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return dict(json.loads(resp.read()))
    except OSError:
        return {}


def test_the_edge_process_consumes_and_produces_over_tls(kafka_tls_settings: Settings, tmp_path: object) -> None:
    metrics = free_port()
    s = lab_settings(kafka_tls_settings, kafka_tls_settings.state_dir, free_port(NODE_IP), "127.0.0.1:53",
                     metrics_port=metrics, metrics_interval_s=0.5)
    assert s.kafka_client_config()["security.protocol"] == "SSL"
    key = f"http://steered.lab.test:{s.edge_port}/tls.bin"
    prod = producer(s.kafka_bootstrap, s)
    prod.produce(s.topic(contract.CACHE_EVENTS), key=key.encode(), value=contract.encode(CacheEvent(
        key, "cached", url=key, host="steered.lab.test", path="objects/aa/tls", size=3, ts=1.0)))
    assert prod.flush(20) == 0
    edge = Proc(s, "edge")
    try:
        edge.wait_line("heatcache-ready edge")
        wait_for(lambda: _get(s.health_url).get("objects") == 1, 30, "the edge to index the event (consumed over TLS)")

        def snapshot() -> bool:
            records = [orjson.loads(m.value()) for m in read_topic(s.kafka_bootstrap, s.topic(contract.METRICS),
                                                                    timeout=5, settings=s)]
            return any(r.get("stage") == "edge" for r in records)

        wait_for(snapshot, 30, "the edge's metrics snapshot (produced over TLS)")
        assert _get(f"http://127.0.0.1:{metrics}/health").get("health") == "ok"
    finally:
        assert edge.finish() == 0
