"""Integration tests for the fetcher (fetcher/app.py) on a real broker and a real aria2c: objects
are fetched concurrently and once; redirects are walked by the fetcher, every hop checked (an
inward hop is refused and nothing is fetched from inside); hostile targets and sizes are refused
with the reason recorded; a poison message is dead-lettered; failures retry and then fail."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
from confluent_kafka import Producer
from pydantic import SecretStr

from cachestore.catalog import open_catalog
from fetcher.app import Fetcher, job_dirs
from heatcache import contract
from heatcache.contract import CacheEvent, FetchProgress, HotUrl
from heatcache.kafkautil import read_topic
from heatcache.lifecycle import StopFlag
from heatcache.netutil import free_port
from heatcache.services.aria2 import Aria2Daemon
from heatcache.services.dnsmasq import Dnsmasq
from heatcache.settings import Settings
from tests.fetcher.origin import Route, TestOrigin


def hot(url: str, host: str = "", admission: str = "") -> bytes:
    host = host or url.split("/")[2].split(":")[0]
    return contract.encode(HotUrl(url, url, host, 2, 2, 86400, time.time(), admission=admission))


def publish(settings: Settings, *items: tuple[bytes, bytes]) -> None:
    prod = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for key, value in items:
        prod.produce(settings.topic(contract.HOT_URLS), key=key, value=value)
    assert prod.flush(10) == 0


def cache_events(settings: Settings) -> dict[str, CacheEvent]:
    out: dict[str, CacheEvent] = {}
    for m in read_topic(settings.kafka_bootstrap, settings.topic(contract.CACHE_EVENTS)):
        event = contract.decode(m.value(), CacheEvent)
        out[event.url] = event
    return out


def wait_events(settings: Settings, urls: set[str], timeout: float = 90.0) -> dict[str, CacheEvent]:
    deadline = time.monotonic() + timeout
    events: dict[str, CacheEvent] = {}
    while time.monotonic() < deadline:
        events = cache_events(settings)
        if urls <= events.keys():
            return events
        time.sleep(0.3)
    raise AssertionError(f"no cache event for {sorted(urls - events.keys())}")


@contextmanager
def running(settings: Settings) -> Iterator[Fetcher]:
    fetcher = Fetcher(settings, settings.kafka_bootstrap)
    stop = StopFlag()
    worker = threading.Thread(target=fetcher.run, args=(stop,))
    worker.start()
    try:
        yield fetcher
    finally:
        stop.set()
        worker.join(30)
        assert not worker.is_alive()
        # run() flushed it; closed now, so it does not reconnect to a broker a test stops next
        fetcher.producer.close()


def test_concurrent_fetches_redirects_and_failures(kafka_settings: Settings, aria2: Aria2Daemon) -> None:
    origin = TestOrigin().start()
    blobs = {f"/v{i}.bin": hashlib.sha256(str(i).encode()).digest() * 8192 for i in range(4)}  # 256 KiB each
    for path, body in blobs.items():
        origin.routes[path] = Route(body, rate=1_000_000)  # ~0.25 s each: they overlap if concurrent
    origin.routes["/moved"] = Route(status=302, headers={"Location": "/v0.bin"})
    origin.routes["/private"] = Route(b"secret", headers={"Cache-Control": "private, max-age=60"})
    origin.routes["/flaky"] = Route(b"f" * 1000, fail_first=1, headers={"Cache-Control": "max-age=600"})
    dead_port = free_port("127.0.0.2")
    settings = kafka_settings.model_copy(update={
        "aria2_rpc_port": aria2.port, "aria2_secret": SecretStr("s3cret"), "allow_private_origins": True,
        "upstream_dns": ("127.0.0.1:9",), "fetch_timeout_s": 30.0, "fetch_retries": 1, "fetch_retry_base_s": 0.2})
    urls = {p: origin.url(p) for p in [*blobs, "/moved", "/private", "/flaky"]}
    dead = f"http://127.0.0.2:{dead_port}/gone.bin"
    private = urls["/private"]
    publish(settings, (b"poison", b"{broken"), *[(u.encode(), hot(u)) for u in urls.values() if u != private],
            (private.encode(), hot(private, admission=f"{private}@1.000000")),
            (urls["/v1.bin"].encode(), hot(urls["/v1.bin"])),  # the same object twice: one download
            (b"dead", hot(dead)))
    try:
        with running(settings) as fetcher:
            events = wait_events(settings, {*urls.values(), dead})
        # a restarted fetcher remembers (the catalog's fetch_admissions): the same admission re-sent
        # after it was answered (it failed) is dropped, and a new admission of a failed key waits
        # for its back-off, answered as failed without asking the origin
        with running(settings) as again:
            publish(settings, (private.encode(), hot(private, admission=f"{private}@1.000000")),
                    (b"dead", hot(dead, admission=f"{dead}@2.000000")))
            deadline = time.monotonic() + 30
            while again.counters["duplicate-admission"] + again.counters["failed-backoff"] < 2:
                assert time.monotonic() < deadline, again.counters
                time.sleep(0.1)
            assert again.counters["duplicate-admission"] == 1 and again.counters["failed-backoff"] == 1
            deadline = time.monotonic() + 30
            while "not fetched again" not in cache_events(settings)[dead].error:
                assert time.monotonic() < deadline
                time.sleep(0.2)
            assert not again.counters["retries"] and not again.jobs
    finally:
        origin.stop()
    for path, body in blobs.items():
        ev = events[urls[path]]
        assert ev.state == "cached" and ev.sha256 == hashlib.sha256(body).hexdigest(), ev
        assert (settings.cache_root / ev.path).read_bytes() == body
        assert ev.etag and ev.content_type == "" and ev.source == "fetch"
    assert origin.gets["/v1.bin"] == 1 and fetcher.counters["joined"] + fetcher.counters["already-cached"] >= 1
    assert origin.peak >= 2  # downloads ran side by side
    moved = events[urls["/moved"]]
    assert moved.state == "cached" and moved.sha256 == hashlib.sha256(blobs["/v0.bin"]).hexdigest()
    assert origin.gets["/moved"] == 0  # the redirect was walked by a HEAD; aria2c got the final URL
    assert events[urls["/private"]].state == "failed" and "private" in events[urls["/private"]].error
    assert origin.gets["/private"] == 0 and origin.heads["/private"] == 1
    assert events[urls["/flaky"]].state == "cached" and origin.gets["/flaky"] == 2  # 500, then a retry
    assert events[dead].state == "failed" and "attempts" in events[dead].error
    assert not job_dirs(settings.cache_root)  # no half files left behind
    catalog = open_catalog(settings.catalog)
    try:
        row = catalog.get(urls["/flaky"])
        assert row is not None and row.state == "cached" and row.size == 1000
        assert row.fresh_until > row.fetched_at + 500  # max-age=600 from the pre-flight
    finally:
        catalog.close()
    dead_letters = read_topic(settings.kafka_bootstrap, settings.topic(contract.DEAD_LETTER))
    assert [orjson.loads(m.value())["topic"] for m in dead_letters] == [settings.topic(contract.HOT_URLS)]
    progress = [contract.decode(m.value(), FetchProgress)
                for m in read_topic(settings.kafka_bootstrap, settings.topic(contract.FETCH_PROGRESS))]
    assert {"queued", "running", "done", "failed"} <= {p.state for p in progress}


def test_hostile_targets_are_refused(kafka_settings: Settings, aria2: Aria2Daemon, dnsmasq: Dnsmasq,
                                    tmp_path: Path) -> None:
    """Inward redirects and direct internal targets, a host resolving to a private address, a
    5 GB Content-Length and a body without length outgrowing the cap: each refused with its
    reason, and nothing is fetched from inside."""
    inside = TestOrigin("127.0.0.1").start()  # the "internal service": must never be asked
    inside.routes["/secret"] = Route(b"top secret")
    origin = TestOrigin().start()  # the lab's public origin (127.0.0.2 is allowed explicitly)
    targets = {
        "/to-loopback": inside.url("/secret"),
        "/to-v6-loopback": f"http://[::1]:{inside.port}/secret",
        "/to-metadata": "http://169.254.169.254/latest/meta-data/",
        "/to-ten": "http://10.1.2.3/x",
        "/to-file": "file:///etc/passwd",
        "/to-private-name": "http://internal.lab.test/x",
    }
    for path, location in targets.items():
        origin.routes[path] = Route(status=302, headers={"Location": location})
    origin.routes["/huge"] = Route(b"", head_length=5 * 1024**3)
    origin.routes["/endless"] = Route(b"x" * (8 * 1024**2), chunked=True, rate=2_000_000)
    origin.routes["/night.bin"] = Route(b"n" * 300_000)  # large: waits for the off-peak hours
    hour = int(time.time() // 3600) % 24
    settings = kafka_settings.model_copy(update={
        "aria2_rpc_port": aria2.port, "aria2_secret": SecretStr("s3cret"), "allow_private_origins": False,
        "origin_allow_networks": ("127.0.0.2/32",), "upstream_dns": (dnsmasq.upstream,),
        "max_object_bytes": 1024**2, "fetch_retries": 0,
        "fetch_large_object_bytes": 200_000, "fetch_offpeak_hours": f"{(hour + 2) % 24}-{(hour + 3) % 24}"})
    direct = [inside.url("/secret"), f"http://[::1]:{inside.port}/secret", "http://169.254.169.254/latest/",
              "http://10.1.2.3/x", "http://internal.lab.test/x"]  # (file:// is refused by the contract itself)
    via = [origin.url(p) for p in targets] + [origin.url("/huge"), origin.url("/endless")]
    night = origin.url("/night.bin")
    publish(settings, *[(u.encode(), hot(u, "h")) for u in [*direct, *via, night]])
    try:
        with running(settings) as fetcher:
            events = wait_events(settings, set(direct + via))
            deadline = time.monotonic() + 30
            while not fetcher.counters["offpeak-waits"]:  # pre-flighted, then parked until its hours
                assert time.monotonic() < deadline, fetcher.counters
                time.sleep(0.05)
            assert night not in cache_events(settings) and not origin.gets["/night.bin"]
    finally:
        origin.stop()
        inside.stop()
    for url in direct + via:
        assert events[url].state == "failed", events[url]
    assert not inside.gets and not inside.heads  # nothing was asked from inside
    for url in [inside.url("/secret"), origin.url("/to-loopback")]:
        assert "not a public address" in events[url].error
    assert "not a public address" in events[origin.url("/to-private-name")].error
    assert "unsupported scheme 'file'" in events[origin.url("/to-file")].error
    assert "over the cap" in events[origin.url("/huge")].error and not origin.gets["/huge"]
    assert "outgrew the cap" in events[origin.url("/endless")].error
    # the cap's refusals are the quota's decision, marked so (replay lets each quota decide them),
    # with the size the fetcher knew; an address-policy refusal is a failed fetch
    huge, endless = events[origin.url("/huge")], events[origin.url("/endless")]
    assert (huge.refused, huge.size) == (True, 5 * 1024**3)
    assert endless.refused and endless.size > 1024**2
    assert not any(events[u].refused for u in direct + via if u not in (huge.url, endless.url))
    assert origin.sent["/endless"] < 8 * 1024**2  # stopped, not downloaded to the end
    assert not job_dirs(settings.cache_root)
