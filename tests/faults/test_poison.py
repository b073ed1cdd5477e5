"""Poison messages on `cache-events`, the topic the DNS and the edge follow: each goes to
`dead-letter` with the reason, the stage keeps running and the next good event is applied
(before, one bad field killed the follower thread and froze the index for good)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import orjson
from confluent_kafka import Producer

from heatcache import contract
from heatcache.contract import CacheEvent
from heatcache.kafkautil import read_topic
from heatcache.lab import NODE_IP, lab_settings, resolve_via
from heatcache.netutil import free_port
from heatcache.services.dnsmasq import Dnsmasq
from heatcache.settings import Settings
from tests.faults.stackproc import Proc, edge_objects, wait_for

GOOD = CacheEvent("http://steered.lab.test/a.bin", "cached", url="http://steered.lab.test/a.bin",
                  host="steered.lab.test", path="objects/aa/a", size=3, ts=1.0)
BODY = orjson.loads(contract.encode(GOOD))
POISON = [
    b"\x00not json",
    orjson.dumps({**BODY, "cache_key": 123}),
    orjson.dumps({**BODY, "state": "weird"}),
    orjson.dumps({**BODY, "size": "3"}),
    orjson.dumps({**BODY, "ts": True}),
    orjson.dumps({**BODY, "url": "http://user:pw@steered.lab.test/a.bin"}),
]


def test_dns_and_edge_dead_letter_poison_and_go_on(kafka_settings: Settings, dnsmasq: Dnsmasq,
                                                   tmp_path: Path) -> None:
    settings = lab_settings(kafka_settings, tmp_path / "state", free_port(NODE_IP), dnsmasq.upstream,
                            kafka_bootstrap=kafka_settings.kafka_bootstrap)
    topic = settings.topic(contract.CACHE_EVENTS)
    prod = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for raw in POISON[:3]:  # some while catching up ...
        prod.produce(topic, key=b"http://steered.lab.test/a.bin", value=raw, partition=0)
    assert prod.flush(10) == 0
    dns, edge = Proc(settings, "dns"), Proc(settings, "edge")
    try:
        dns.wait_line("heatcache-ready dns")
        edge.wait_line("heatcache-ready edge")
        for raw in POISON[3:]:  # ... and some while following
            prod.produce(topic, key=b"http://steered.lab.test/a.bin", value=raw, partition=0)
        # the key on the port the lab edge serves: the DNS steers a host only while the edge
        # answers every port its keys use (issue 18), and the lab edge does not listen on 80
        key = f"http://steered.lab.test:{settings.edge_port}/a.bin"
        good = dataclasses.replace(GOOD, cache_key=key, url=key)
        prod.produce(topic, key=key.encode(), value=contract.encode(good), partition=0)
        assert prod.flush(10) == 0
        wait_for(lambda: resolve_via((settings.dns_host, settings.dns_port), "steered.lab.test") == [NODE_IP], 30,
                 "the DNS to steer the host of the good event")
        wait_for(lambda: edge_objects(settings) == 1, 30, "the edge to index the good event")
        assert dns.proc.poll() is None and edge.proc.poll() is None
        deadline = time.monotonic() + 30
        dead: list[dict[str, object]] = []
        while len(dead) < 2 * len(POISON) and time.monotonic() < deadline:
            dead = [orjson.loads(m.value()) for m in read_topic(settings.kafka_bootstrap,
                                                                 settings.topic(contract.DEAD_LETTER))]
        assert len(dead) == 2 * len(POISON)  # one per poison message from each stage
        reasons = sorted({str(d["reason"]) for d in dead})
        assert any("not JSON" in r for r in reasons) and any("cache_key: must be a string" in r for r in reasons)
        assert any("state" in r and "weird" in r for r in reasons) and any("credentials" in r for r in reasons)
        assert all(d["topic"] == topic for d in dead)
        assert not any("user:pw" in str(d["value"]) for d in dead)  # credentials never carried on
        assert "user:pw" not in dns.output + edge.output
    finally:
        assert dns.finish() == 0 and edge.finish() == 0
