"""End to end on real parts: HTTP on loopback -> sniffer (AF_PACKET + BPF) -> Kafka -> Faust
-> aria2c -> catalog (MariaDB or SQLite) -> cache-events -> DNS steering -> edge hit.

The lab: origin 127.0.0.2, cache node 127.0.0.3, clients 127.0.1.N, dnsmasq as the upstream
resolver that knows origin.lab.test. Every stage runs as its own process through the same
launcher as `heatcache up`.
"""

from __future__ import annotations

import hashlib
import re
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from cachestore.catalog import open_catalog
from heatcache import contract
from heatcache.contract import CacheEvent, HotUrl, RequestBatch
from heatcache.kafkautil import read_topic
from heatcache.lab import (
    NODE_IP,
    ORIGIN_IP,
    Origin,
    client_get,
    client_sources,
    lab_settings,
    make_sample_files,
    resolve_via,
    shared_port,
)
from heatcache.metrics import ALL_STAGES, StageMetrics
from heatcache.netutil import free_port_run
from heatcache.services.dnsmasq import Dnsmasq
from heatcache.settings import Settings
from heatcache.stack import STAGES, Stack

HOST = "origin.lab.test"
FILES = {"video.bin": 700_000, "single.bin": 50_000}


@dataclass
class Lab:
    port: int
    origin: Origin
    files: dict[str, bytes]
    dns: Dnsmasq

    def settings(self, base: Settings, state: Path, **update: object) -> Settings:
        return lab_settings(base, state, self.port, self.dns.upstream, **update)

    def get(self, client: int, settings: Settings, path: str, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
        src = client_sources(client + 1)[client]
        return client_get(src, (settings.dns_host, settings.dns_port), HOST, self.port, path, headers)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    port = shared_port()
    files = make_sample_files(tmp_path / "www", FILES)
    origin = Origin(tmp_path / "www", ORIGIN_IP, port).start()
    dns = Dnsmasq({HOST: ORIGIN_IP})
    dns.start()
    yield Lab(port, origin, files, dns)
    dns.stop()
    origin.stop()


def wait_steered(settings: Settings, timeout: float = 90.0, stack: Stack | None = None) -> float:
    start = time.monotonic()
    while resolve_via((settings.dns_host, settings.dns_port), HOST) != [NODE_IP]:
        assert stack is None or not stack.failed(), f"stage(s) died: {stack.failed() if stack else ''}"
        assert time.monotonic() - start < timeout, "the host was never steered to the cache node"
        time.sleep(0.3)
    return time.monotonic() - start


def assert_hit(lab: Lab, settings: Settings, client: int) -> None:
    reply = lab.get(client, settings, "/video.bin")
    assert reply.address == NODE_IP
    assert reply.status == 200 and reply.headers["x-cache"] == "HIT"
    assert reply.body == lab.files["video.bin"]
    ranged = lab.get(client, settings, "/video.bin", {"Range": "bytes=100-199"})
    assert ranged.status == 206 and ranged.headers["x-cache"] == "HIT"
    assert ranged.body == lab.files["video.bin"][100:200]


@pytest.mark.parametrize("catalog", ["mariadb", "sqlite"])
def test_request_to_local_hit(catalog: str, lab: Lab, kafka_settings: Settings, tmp_path: Path,
                              request: pytest.FixtureRequest) -> None:
    db_url = request.getfixturevalue("mariadb").url if catalog == "mariadb" else ""
    settings = lab.settings(kafka_settings, tmp_path / "state", catalog_url=db_url,
                            metrics_port=free_port_run(len(STAGES)))
    key = f"http://{HOST}:{lab.port}/video.bin"
    with Stack(settings, console=None) as stack:
        # Poison messages first: each consumer dead-letters them and goes on.
        prod = Producer({"bootstrap.servers": stack.bootstrap})
        prod.produce(settings.topic(contract.REQUESTS), key=b"0", value=b"\x00not json", partition=0)
        prod.produce(settings.topic(contract.HOT_URLS), key=b"k", value=b'{"v": 1, "kind": "hot"}')
        assert prod.flush(10) == 0
        # Two distinct clients fetch the video from the origin; one client fetches another file.
        for client in (0, 1):
            reply = lab.get(client, settings, "/video.bin?utm_source=feed")
            assert reply.address == ORIGIN_IP and reply.body == lab.files["video.bin"]
            assert "x-cache" not in reply.headers
        assert lab.get(0, settings, "/single.bin").status == 200
        wait_steered(settings, stack=stack)

        # A catalog row in the configured database, with the right digest.
        cat = open_catalog(settings.catalog)
        try:
            row = cat.get(key)
        finally:
            cat.close()
        assert row is not None and row.state == "cached"
        assert row.sha256 == hashlib.sha256(lab.files["video.bin"]).hexdigest()
        assert row.size == len(lab.files["video.bin"])
        if catalog == "mariadb":
            assert settings.catalog.startswith("mysql://")

        # A CacheEvent on cache-events; exactly one hot URL; the sniffer saw every request.
        events = [contract.decode(m.value(), CacheEvent)
                  for m in read_topic(stack.bootstrap, settings.topic(contract.CACHE_EVENTS))]
        assert [(e.cache_key, e.state) for e in events] == [(key, "cached")]
        hot = [contract.decode(m.value(), HotUrl)
               for m in read_topic(stack.bootstrap, settings.topic(contract.HOT_URLS)) if m.key() != b"k"]
        assert [(h.cache_key, h.clients) for h in hot] == [(key, 2)]
        seen = [e for m in read_topic(stack.bootstrap, settings.topic(contract.REQUESTS)) if m.value()[:1] == b"{"
                for e in contract.decode(m.value(), RequestBatch).events]
        assert sorted(e.path for e in seen) == ["/single.bin", "/video.bin?utm_source=feed",
                                                "/video.bin?utm_source=feed"]
        assert len({e.client for e in seen}) == 2 and not any("127.0.1." in e.client for e in seen)

        # The origin was asked by the two clients and the fetcher, and never again after that.
        origin_gets = lab.origin.hits["/video.bin?utm_source=feed"]
        assert origin_gets == 3
        assert_hit(lab, settings, client=2)
        assert lab.origin.hits["/video.bin?utm_source=feed"] == origin_gets
        assert sum(lab.origin.hits.values()) == origin_gets + 1

        # An uncached object on the steered host passes through the edge to the origin.
        single = lab.get(2, settings, "/single.bin")
        assert single.address == NODE_IP and single.headers["x-cache"] == "MISS"
        assert single.body == lab.files["single.bin"]
        # Each serving stage exports its counters for Prometheus, on base + its place in STAGES.
        def scrape(stage: str) -> str:
            url = f"http://127.0.0.1:{settings.metrics_port + STAGES.index(stage)}/metrics"
            return urllib.request.urlopen(url, timeout=5).read().decode()

        assert re.search(r'^heatcache_edge_responses_total\{cache="hit"\} [1-9]', scrape("edge"), re.M)
        assert re.search(r'^heatcache_dns_answers_total\{result="steered"\} [1-9]', scrape("dns"), re.M)
        assert re.search(r'^heatcache_sniffer_requests_total [1-9]', scrape("sniff"), re.M)
        # ... and the same declared metrics as flat snapshots on `metrics`, one fixed field set per stage
        snaps: dict[str, list[dict[str, object]]] = {}
        for m in read_topic(stack.bootstrap, settings.topic(contract.METRICS)):
            record = orjson.loads(m.value())
            snaps.setdefault(str(record["stage"]), []).append(record)
        for stage in ("dns", "edge", "sniffer"):
            assert snaps.get(stage), stage
            assert all(list(r) == StageMetrics(ALL_STAGES[stage]).spec.fields() for r in snaps[stage])
            assert snaps[stage][-1]["node"] == settings.node_name and snaps[stage][-1]["health"] == "ok"
        dead = read_topic(stack.bootstrap, settings.topic(contract.DEAD_LETTER))
        assert sorted(orjson.loads(m.value())["topic"] for m in dead) == sorted(
            [settings.topic(contract.REQUESTS), settings.topic(contract.HOT_URLS)])
    assert stack.children == {}


def test_restart_keeps_topics_and_hits(lab: Lab, base_settings: Settings, tmp_path: Path) -> None:
    settings = lab.settings(base_settings, tmp_path / "state")  # owns its broker: no bootstrap configured
    with Stack(settings, console=None) as stack:
        for client in (0, 1):
            assert lab.get(client, settings, "/video.bin").status == 200
        wait_steered(settings, stack=stack)
        assert_hit(lab, settings, client=2)
        first_bootstrap = stack.bootstrap
        # SIGTERM to every stage: each one flushes, commits and exits 0
        assert stack.stop() == {s: 0 for s in ("console", "sniff", "edge", "dns", "fetch", "streams")}
    gets = lab.origin.hits["/video.bin"]
    with Stack(settings, console=None) as stack:
        topics = AdminClient({"bootstrap.servers": stack.bootstrap}).list_topics(timeout=10).topics
        assert {settings.topic(t) for t in contract.ALL_TOPICS} <= set(topics)
        assert stack.bootstrap == first_bootstrap  # same broker address: same state directory
        wait_steered(settings, timeout=30, stack=stack)
        assert_hit(lab, settings, client=3)
    assert lab.origin.hits["/video.bin"] == gets
