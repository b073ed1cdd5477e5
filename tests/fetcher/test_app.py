"""Integration tests for the fetcher (fetcher/app.py) on a real broker and a real aria2c: a good
object is fetched once; a dead origin, a private address and a poison message each end as a
recorded failure (or a dead letter) while the fetcher goes on."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import orjson
from confluent_kafka import Producer

from cachestore.catalog import open_catalog
from fetcher.app import Fetcher
from heatcache import contract
from heatcache.contract import CacheEvent, HotUrl
from heatcache.kafkautil import read_topic
from heatcache.lab import Origin, make_sample_files
from heatcache.lifecycle import StopFlag
from heatcache.netutil import free_port
from heatcache.services.aria2 import Aria2Daemon
from heatcache.settings import Settings


def hot(url: str) -> bytes:
    host = url.split("/")[2].split(":")[0]
    return contract.encode(HotUrl(url, url, host, 2, 2, 86400, time.time()))


def test_fetches_once_and_records_failures(kafka_settings: Settings, aria2: Aria2Daemon, tmp_path: Path) -> None:
    files = make_sample_files(tmp_path / "www", {"ok.bin": 200_000})
    origin = Origin(tmp_path / "www", "127.0.0.2").start()
    dead_port = free_port("127.0.0.2")  # nothing listens there
    settings = kafka_settings.model_copy(update={
        "aria2_rpc_port": aria2.port, "aria2_secret": "s3cret", "allow_private_origins": True,
        "upstream_dns": ("127.0.0.1:9",), "fetch_timeout_s": 30.0})
    good = f"http://127.0.0.2:{origin.port}/ok.bin"
    prod = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    topic = settings.topic(contract.HOT_URLS)
    prod.produce(topic, key=b"poison", value=b"{broken")
    prod.produce(topic, key=good.encode(), value=hot(good))
    prod.produce(topic, key=good.encode(), value=hot(good))  # the same object again: not fetched twice
    prod.produce(topic, key=b"dead", value=hot(f"http://127.0.0.2:{dead_port}/gone.bin"))
    prod.produce(topic, key=b"ftp", value=hot("ftp://127.0.0.2/x.bin"))
    assert prod.flush(10) == 0
    fetcher = Fetcher(settings, settings.kafka_bootstrap)
    stop = StopFlag()
    worker = threading.Thread(target=fetcher.run, args=(stop,))
    worker.start()
    try:
        deadline = time.monotonic() + 60
        events: list[CacheEvent] = []
        while len(events) < 2 and time.monotonic() < deadline:
            time.sleep(0.3)
            events = [contract.decode(m.value(), CacheEvent)
                      for m in read_topic(settings.kafka_bootstrap, settings.topic(contract.CACHE_EVENTS))]
    finally:
        stop.set()
        worker.join(30)
        origin.stop()
    states = {e.url: (e.state, e.error) for e in events}
    assert states[good][0] == "cached"
    assert states[f"http://127.0.0.2:{dead_port}/gone.bin"][0] == "failed"
    assert "ftp://127.0.0.2/x.bin" not in states  # the strict contract refuses it: a dead letter
    assert origin.hits["/ok.bin"] == 1 and fetcher.counters["already-cached"] == 1
    cached = next(e for e in events if e.state == "cached")
    assert cached.sha256 == hashlib.sha256(files["ok.bin"]).hexdigest()
    assert (settings.cache_root / cached.path).read_bytes() == files["ok.bin"]
    assert not any((settings.cache_root / "tmp").iterdir())  # no half files left behind
    catalog = open_catalog(settings.catalog)
    try:
        row = catalog.get(good)
        assert row is not None and row.state == "cached" and row.size == 200_000
    finally:
        catalog.close()
    dead = [orjson.loads(m.value()) for m in read_topic(settings.kafka_bootstrap, settings.topic(contract.DEAD_LETTER))]
    assert [d["topic"] for d in dead] == [topic, topic]
    assert any("not an http(s) URL" in d["reason"] for d in dead)


def test_private_origin_refused_by_default(kafka_settings: Settings, aria2: Aria2Daemon) -> None:
    settings = kafka_settings.model_copy(update={"aria2_rpc_port": aria2.port, "aria2_secret": "s3cret"})
    fetcher = Fetcher(settings, settings.kafka_bootstrap)
    try:
        with_private = HotUrl("http://127.0.0.1:1/x", "http://127.0.0.1:1/x", "127.0.0.1", 2, 2, 1, 1.0)
        from heatcache.safety import ForbiddenAddress

        try:
            fetcher.fetch(with_private)
            raise AssertionError("fetched from a loopback origin")
        except ForbiddenAddress:
            pass
    finally:
        fetcher.consumer.close()
        fetcher.catalog.close()
