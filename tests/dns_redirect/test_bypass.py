"""Leak detection: the edge counts the sniffer's requests for steered hosts as bypassed, what it
served itself as served, and publishes the ratio per host (unit: BypassWatch on a real index;
integration: `heatcache sniff` reading a gateway capture and `heatcache edge` on the session
broker, served by real HTTP hits)."""

from __future__ import annotations

import http.client
import logging
import struct
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
from heatcache.contract import CacheEvent, RequestEvent
from heatcache.control import make_event
from heatcache.kafkautil import producer
from heatcache.lab import NODE_IP, lab_settings
from heatcache.netutil import free_port
from heatcache.settings import Settings, load_settings
from sniffer.synth import PCAP_HEADER, tcp_frame
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
                      "bypassed.steered.test@dorms": 1, "bypassed.steered.test@other": 1, "steering_stopped": 0}
    assert counters["bypass.requests"] == 2 and counters["bypass.high-hosts"] == 1
    assert counters["bypass.max-ratio"] == pytest.approx(1 / 3)
    assert "steering bypass: steered.test" in caplog.text
    # the TLS figures are cumulative: only the increase counts
    watch.collect(102.0, Counter(), Counter(), {"steered.test": {"connections": 3}})
    assert watch.tick(102.0)["served.steered.test"] == 5


def test_pseudonymous_clients_have_no_network(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path, console_networks=("dorms=10.1.0.0/16",), client_id_network=False)
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


def write_pcap(path: Path, frames: list[tuple[float, bytes]]) -> None:
    with open(path, "wb") as fh:
        fh.write(PCAP_HEADER)
        for ts, frame in frames:
            sec = int(ts)
            fh.write(struct.pack("<IIII", sec, int((ts - sec) * 1e6), len(frame), len(frame)))
            fh.write(frame)


def test_the_sniffer_and_the_edge_measure_the_bypass_ratio(kafka_settings: Settings, tmp_path: Path) -> None:
    """End to end on the real stages: `heatcache sniff` reads a capture of the gateway, `heatcache
    edge` serves hits and follows `requests` and `control`. Counted: the requests that went to the
    origin while steering was on, per labelled pseudonymous network. Not counted: the node's own
    traffic (its address is not in HEATCACHE_IGNORE_ADDRESSES), an unsteered host, and requests
    captured after the operator stopped steering."""
    port = free_port(NODE_IP)
    pcap = tmp_path / "gateway.pcap"
    s = lab_settings(kafka_settings, tmp_path / "state", port, "127.0.0.1:1", metrics_interval_s=0.3,
                     metrics_port=0, console_networks=("dorms=10.1.0.0/16",), ignore_addresses=(),
                     sniff_pcap=pcap, sniff_iface="")
    host = "steered.lab.test"
    key = f"http://{host}:{port}/a"
    rel = object_relpath(key)
    (s.cache_root / rel).parent.mkdir(parents=True)
    (s.cache_root / rel).write_bytes(b"x" * 1000)
    prod = producer(s.kafka_bootstrap)
    prod.produce(s.topic(contract.CACHE_EVENTS), key=key.encode(),
                 value=contract.encode(CacheEvent(key, "cached", url=key, host=host, path=rel, size=1000)))
    now = time.time()
    stop = make_event("steering", "stopped", by="test", now=now - 10)  # the operator stopped steering 10 s ago
    prod.produce(s.topic(contract.CONTROL), key=stop.key.encode(), value=contract.encode(stop))
    prod.flush(10)

    def get(src: str, dst: str, sport: int, hostname: str = host) -> bytes:
        return tcp_frame(src, dst, sport, port, f"GET /a HTTP/1.1\r\nHost: {hostname}:{port}\r\n\r\n".encode())

    origin = "198.51.100.7"
    write_pcap(pcap, [
        (now - 30, get("10.1.0.7", origin, 40001)),  # bypassed, from the dorms
        (now - 29, get("10.1.0.8", origin, 40002)),  # bypassed, from the dorms
        (now - 28, get("10.9.0.1", origin, 40003)),  # bypassed, from no named network
        (now - 27, get("10.1.0.7", NODE_IP, 40004)),  # a client reaching the node: the edge counts it
        (now - 26, get(NODE_IP, origin, 40005)),  # the node's own request to the origin
        (now - 25, get("10.1.0.7", origin, 40006, "other.lab.test")),  # a host not steered
        (now - 5, get("10.1.0.7", origin, 40007)),  # after the stop: no bypass
    ])
    cons = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": "t-bypass", "enable.auto.commit": False})
    cons.assign([TopicPartition(s.topic(contract.METRICS), p, OFFSET_BEGINNING)
                 for p in cons.list_topics(s.topic(contract.METRICS), timeout=10).topics[s.topic(contract.METRICS)]
                 .partitions])
    edge = Proc(s, "edge")
    sniff: Proc | None = None
    try:
        edge.wait_line("bypass: following", 60)
        edge.wait_line("bypass: steering stopped", 30)
        for _ in range(3):  # three hits served by the edge
            conn = http.client.HTTPConnection(NODE_IP, port, timeout=10)
            conn.request("GET", "/a", headers={"Host": f"{host}:{port}"})
            assert conn.getresponse().read() == b"x" * 1000
            conn.close()
        sniff = Proc(s, "sniff")
        assert sniff.exit_code(60) == 0, sniff.output[-3000:]  # the capture read to its end, published
        seen: dict[str, dict[str, Any]] = {}

        def counted() -> bool:
            rec = latest(cons, RECORD, seen)
            return rec is not None and rec.get(f"bypassed.{host}", 0) >= 3 and rec.get(f"served.{host}") == 3

        try:
            wait_for(counted, 60, "the edge-top record with bypassed and served requests")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {seen.get(RECORD)}\n{sniff.output[-2000:]}\n{edge.output[-3000:]}") from None
        rec = seen[RECORD]
        assert rec[f"bypassed.{host}"] == 3 and rec[f"bypass_ratio.{host}"] == 0.5
        assert rec[f"bypassed.{host}@dorms"] == 2 and rec[f"bypassed.{host}@other"] == 1
        assert rec["steering_stopped"] == 1
        assert not any("other.lab.test" in k for k in rec)  # not steered: no leak
        wait_for(lambda: (latest(cons, "edge", seen) or {}).get("bypassed_requests_total", 0) == 3, 30,
                 "the declared counter in the edge's snapshot")
    finally:
        if sniff is not None:
            sniff.finish()
        assert edge.finish() == 0, edge.output[-3000:]
        cons.close()
        prod.flush(5)
