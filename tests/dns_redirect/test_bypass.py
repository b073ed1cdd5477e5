"""Leak detection: the edge counts the sniffer's requests for steered hosts as bypassed, what it
served itself as served, and publishes the ratio per host (unit: BypassWatch on a real index;
integration: `heatcache edge` on the session broker, served by real HTTP hits)."""

from __future__ import annotations

import http.client
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from cachestore.paths import object_relpath
from dns_redirect.bypass import RECORD, BypassWatch
from dns_redirect.index import CacheIndex
from heatcache import contract
from heatcache.contract import CacheEvent, RequestBatch, RequestEvent
from heatcache.kafkautil import producer
from heatcache.lab import NODE_IP, lab_settings
from heatcache.netutil import free_port
from heatcache.settings import Settings, load_settings
from tests.faults.stackproc import Proc, wait_for


def request(host: str, client: str, ts: float, path: str = "/a") -> RequestEvent:
    url = f"http://{host}{path}"
    return RequestEvent(ts, client, "GET", host, path, url, url)


def test_only_steered_hosts_count_and_networks_are_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = load_settings(state_dir=tmp_path, client_id_raw=True, console_networks=("dorms=10.1.0.0/16",),
                             bypass_min_requests=4, bypass_alert_ratio=0.3)
    index = CacheIndex()
    index.apply(CacheEvent("http://steered.test/a", "cached", path="objects/00/a"))
    counters: Counter[str] = Counter()
    watch = BypassWatch(settings, index.is_steered, counters)
    watch.on_events([request("Steered.TEST.", "10.1.2.3", 100.0), request("steered.test", "10.9.9.9", 100.5),
                     request("elsewhere.test", "10.1.2.3", 100.0)])
    served_keys = Counter({"http://steered.test/a": 1})
    served_hosts = Counter({"steered.test": 1})
    with caplog.at_level(logging.WARNING, "dns_redirect.bypass"):
        watch.collect(101.0, served_keys, served_hosts, {"steered.test": {"connections": 2}})
        fields = watch.tick(101.0)
    assert not served_keys and not served_hosts  # collected: the edge starts counting afresh
    assert fields == {"bypass_ratio.steered.test": 0.3333, "bypassed.steered.test": 2, "served.steered.test": 4,
                      "bypassed.steered.test@dorms": 1, "bypassed.steered.test@other": 1}
    assert counters["bypass.requests"] == 2 and counters["bypass.high-hosts"] == 1
    assert counters["bypass.max-ratio"] == pytest.approx(1 / 3)
    assert "steering bypass: steered.test" in caplog.text
    # the TLS figures are cumulative: only the increase counts
    watch.collect(102.0, Counter(), Counter(), {"steered.test": {"connections": 3}})
    assert watch.tick(102.0)["served.steered.test"] == 5


def test_pseudonymous_clients_have_no_network(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path, console_networks=("dorms=10.1.0.0/16",))
    index = CacheIndex()
    index.apply(CacheEvent("http://steered.test/a", "cached", path="objects/00/a"))
    watch = BypassWatch(settings, index.is_steered, Counter())
    watch.on_events([request("steered.test", "c-3f2a9b", 100.0)])
    assert watch.tick(100.5)["bypassed.steered.test@pseudonymous"] == 1


def latest(cons: Consumer, stage: str, seen: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    for msg in cons.consume(200, 0.2):
        if msg.error() is None or msg.error().code() != KafkaError._PARTITION_EOF:
            rec = orjson.loads(msg.value())
            seen[rec["stage"]] = rec
    return seen.get(stage)


def test_edge_publishes_the_bypass_ratio_of_a_steered_host(kafka_settings: Settings, tmp_path: Path) -> None:
    port = free_port(NODE_IP)
    s = lab_settings(kafka_settings, tmp_path / "state", port, "127.0.0.1:1", metrics_interval_s=0.3,
                     metrics_port=0, client_id_raw=True, console_networks=("dorms=10.1.0.0/16",))
    host = "steered.lab.test"
    key = f"http://{host}:{port}/a"
    rel = object_relpath(key)
    (s.cache_root / rel).parent.mkdir(parents=True)
    (s.cache_root / rel).write_bytes(b"x" * 1000)
    prod = producer(s.kafka_bootstrap)
    prod.produce(s.topic(contract.CACHE_EVENTS), key=key.encode(),
                 value=contract.encode(CacheEvent(key, "cached", url=key, host=host, path=rel, size=1000)))
    prod.flush(10)
    cons = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": "t-bypass", "enable.auto.commit": False})
    cons.assign([TopicPartition(s.topic(contract.METRICS), p, OFFSET_BEGINNING)
                 for p in cons.list_topics(s.topic(contract.METRICS), timeout=10).topics[s.topic(contract.METRICS)]
                 .partitions])
    edge = Proc(s, "edge")
    try:
        edge.wait_line("edge on", 60)
        for _ in range(3):  # three hits served by the edge
            conn = http.client.HTTPConnection(NODE_IP, port, timeout=10)
            conn.request("GET", "/a", headers={"Host": f"{host}:{port}"})
            assert conn.getresponse().read() == b"x" * 1000
            conn.close()
        # what the sniffer publishes for clients going to the origin directly (and an unsteered host);
        # sent until the edge's follower (which starts at the end of `requests`) has counted some
        seen: dict[str, dict[str, Any]] = {}

        def counted() -> bool:
            batch = RequestBatch(0, (request(host, "10.1.0.7", time.time(), "/a"),
                                     request("other.lab.test", "10.1.0.7", time.time())))
            prod.produce(s.topic(contract.REQUESTS), key=b"0", value=contract.encode(batch))
            prod.flush(5)
            rec = latest(cons, RECORD, seen)
            return rec is not None and rec.get(f"bypassed.{host}", 0) >= 1 and rec.get(f"served.{host}") == 3

        wait_for(counted, 60, "the edge-top record with bypassed and served requests")
        rec = seen[RECORD]
        n = rec[f"bypassed.{host}"]
        assert rec[f"bypass_ratio.{host}"] == round(n / (n + 3), 4)
        assert rec[f"bypassed.{host}@dorms"] == n
        assert not any("other.lab.test" in k for k in rec)  # not steered: no leak
        wait_for(lambda: (latest(cons, "edge", seen) or {}).get("bypassed_requests_total", 0) >= n, 30,
                 "the declared counter in the edge's snapshot")
    finally:
        assert edge.finish() == 0, edge.output[-3000:]
        cons.close()
        prod.flush(5)
