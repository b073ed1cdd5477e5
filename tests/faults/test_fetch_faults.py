"""Fault cases of the fetcher, on real services: SIGTERM during a long download (stops within 5 s,
the hot URL is handled after the restart without downloading again), kill -9 of aria2c mid-download
(the download resumes: the origin sends the remaining bytes), the catalog's MariaDB stopped while a
download runs (no crash, no second download, a 402-character ETag stored), and the inward redirect
through the fetcher with the shared fault fixtures."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pydantic import SecretStr

from heatcache import contract
from heatcache.kafkautil import read_topic
from heatcache.services.aria2 import Aria2Daemon
from heatcache.services.mariadb import MariaDB
from heatcache.settings import Settings
from heatcache.stack import settings_env
from tests.faults.conftest import SECRET_BODY
from tests.faults.stackproc import wait_for
from tests.fetcher.origin import Route, TestOrigin
from tests.fetcher.test_app import hot, publish, running, wait_events


def fetch_settings(base: Settings, aria2: Aria2Daemon, **more: object) -> Settings:
    return base.model_copy(update={"aria2_rpc_port": aria2.port, "aria2_secret": SecretStr("s3cret"),
                                   "allow_private_origins": True, "upstream_dns": ("127.0.0.1:9",),
                                   "fetch_retry_base_s": 0.2, **more})


def refused_inward(kafka_settings: Settings, aria2: Aria2Daemon, hostile_origin: TestOrigin,
                   secret_service: TestOrigin, path: str) -> contract.CacheEvent:
    """Fetch ``path`` of the hostile origin (only 127.0.0.2 allowed): its CacheEvent, which must
    say failed, with nothing asked from the secret service and nothing cached."""
    settings = fetch_settings(kafka_settings, aria2, allow_private_origins=False,
                              origin_allow_networks=("127.0.0.2/32",))
    url = hostile_origin.url(path)
    publish(settings, (url.encode(), hot(url)))
    with running(settings):
        events = wait_events(settings, {url})
    assert events[url].state == "failed", events[url]
    assert secret_service.asked("/secret") == 0
    cached = [m for m in read_topic(settings.kafka_bootstrap, settings.topic(contract.CACHE_EVENTS))
              if b'"cached"' in (m.value() or b"")]
    assert not cached
    return events[url]


def assert_resumed(origin: TestOrigin, path: str, body: bytes) -> None:
    """The download of ``path`` went on from where aria2c's file ended: its last GET asked a
    range past 0, and the origin sent the remaining bytes, not the whole object again."""
    starts = [int(r[6:].split("-")[0]) for r in origin.ranges[path] if r.startswith("bytes=")]
    assert starts and starts[-1] > 0, origin.ranges
    assert origin.sent[path] < 2 * len(body)


def test_sigterm_during_a_long_download(kafka_settings: Settings, aria2: Aria2Daemon, tmp_path: Path) -> None:
    origin = TestOrigin().start()
    body = os.urandom(1_200_000)
    origin.routes["/long.bin"] = Route(body, rate=250_000)  # ~5 s
    settings = fetch_settings(kafka_settings, aria2)
    url = origin.url("/long.bin")
    publish(settings, (url.encode(), hot(url)))
    env = {**os.environ, **settings_env(settings)}
    cmd = [sys.executable, "-m", "heatcache.cli", "fetch"]
    log = open(tmp_path / "fetch.log", "ab")
    first = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    second = None
    try:
        wait_for(lambda: origin.sent["/long.bin"] > 100_000, 60, "the download to start")
        sent = time.monotonic()
        first.send_signal(signal.SIGTERM)
        assert first.wait(10) == 0
        assert time.monotonic() - sent < 5.0, "the fetcher took longer than 5 s to stop"
        second = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        events = wait_events(settings, {url})
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(10)
        log.close()
        origin.stop()
    assert events[url].state == "cached" and events[url].sha256 == hashlib.sha256(body).hexdigest()
    # aria2c's requests go through the fetcher's policy proxy, so the stop cuts its connection:
    # the restarted fetcher adopts (or re-adds) the download and aria2c resumes it from its file
    assert_resumed(origin, "/long.bin", body)


def test_kill9_of_aria2c_resumes(kafka_settings: Settings, aria2: Aria2Daemon) -> None:
    origin = TestOrigin().start()
    body = os.urandom(1_200_000)
    origin.routes["/big.bin"] = Route(body, rate=300_000)
    settings = fetch_settings(kafka_settings, aria2)
    url = origin.url("/big.bin")
    publish(settings, (url.encode(), hot(url)))
    try:
        with running(settings) as fetcher:
            wait_for(lambda: origin.sent["/big.bin"] > 300_000, 60, "the download to get going")
            assert aria2.proc is not None
            aria2.proc.kill()
            aria2.proc.wait()
            aria2.proc = None
            aria2.start()  # same port, same session file (what the supervisor does)
            events = wait_events(settings, {url})
    finally:
        origin.stop()
    assert events[url].state == "cached" and events[url].sha256 == hashlib.sha256(body).hexdigest()
    # aria2c's resume: a probe for the length, then the rest from where its file ends
    assert_resumed(origin, "/big.bin", body)
    assert fetcher.counters["fetched"] == 1


def test_mariadb_stopped_during_a_download(kafka_settings: Settings, aria2: Aria2Daemon, mariadb: MariaDB) -> None:
    origin = TestOrigin().start()
    body = os.urandom(600_000)
    long_etag = '"' + "e" * 400 + '"'
    origin.routes["/db.bin"] = Route(body, rate=300_000, headers={"ETag": long_etag})
    settings = fetch_settings(kafka_settings, aria2, catalog_url=mariadb.url)
    url = origin.url("/db.bin")
    publish(settings, (url.encode(), hot(url)))
    try:
        with running(settings) as fetcher:
            wait_for(lambda: origin.sent["/db.bin"] > 0, 60, "the download to start")
            assert mariadb.proc is not None
            args = mariadb.proc.args
            mariadb.proc.kill()
            mariadb.proc.wait()
            wait_for(lambda: fetcher.counters["delays"] > 0, 60, "the fetcher to find the database gone")
            mariadb.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                            start_new_session=True)
            events = wait_events(settings, {url})
    finally:
        origin.stop()
    assert events[url].state == "cached" and events[url].etag == long_etag
    assert origin.gets["/db.bin"] == 1  # stored once the database was back, not downloaded again


def test_inward_redirect_through_the_fetcher(kafka_settings: Settings, aria2: Aria2Daemon,
                                             hostile_origin: TestOrigin, secret_service: TestOrigin) -> None:
    hostile_origin.redirect("/video.bin", secret_service.url("/secret"))
    failed = refused_inward(kafka_settings, aria2, hostile_origin, secret_service, "/video.bin")
    assert "127.0.0.1 is not a public address" in failed.error


def test_redirect_only_to_arias_own_request(kafka_settings: Settings, aria2: Aria2Daemon,
                                            hostile_origin: TestOrigin, secret_service: TestOrigin) -> None:
    """The origin answers the pre-flight with 200 and aria2c's own request with a 302 inward:
    the policy proxy refuses the hop, nothing is cached, the failure says why."""
    # the same length as the secret: the size check after the download cannot tell them apart
    hostile_origin.once["/swap.bin"] = Route(b"x" * len(SECRET_BODY),
                                             headers={"Content-Type": "application/octet-stream"})
    hostile_origin.redirect("/swap.bin", secret_service.url("/secret"))
    failed = refused_inward(kafka_settings, aria2, hostile_origin, secret_service, "/swap.bin")
    assert hostile_origin.asked("/swap.bin") >= 2  # the pre-flight and aria2c's request
    assert "refused by the address policy" in failed.error
    assert "127.0.0.1 is not a public address" in failed.error


def test_broker_down_past_the_delivery_timeout(base_settings: Settings, aria2: Aria2Daemon, tmp_path: Path) -> None:
    """A private broker stopped while a download runs, for longer than the producer's
    message.timeout.ms: the CacheEvent is produced again when it is back, none is lost."""
    from heatcache.services.kafka import EmbeddedKafka, ensure_topics

    broker = EmbeddedKafka(tmp_path / "kafka", heap_mb=256, fast_start=True)
    bootstrap = broker.start()
    origin = TestOrigin().start()
    body = os.urandom(900_000)
    origin.routes["/slow.bin"] = Route(body, rate=300_000)  # ~3 s
    settings = fetch_settings(base_settings.model_copy(update={"kafka_bootstrap": bootstrap}), aria2,
                              fetch_producer_timeout_ms=1500)
    try:
        ensure_topics(bootstrap, settings)
        url = origin.url("/slow.bin")
        publish(settings, (url.encode(), hot(url)))
        with running(settings) as fetcher:
            wait_for(lambda: origin.sent["/slow.bin"] > 0, 60, "the download to start")
            # its port held while it is down: another process taking it would move the broker, and
            # the fetcher (which keeps the address) would meet the other one: every delivery timed
            # out, "broker reachable again" (CI, once at load 8-14)
            broker.stop(hold=True)
            wait_for(lambda: fetcher.counters["redelivered"] > 0, 60, "a delivery to time out")
            assert broker.start() == bootstrap, "the broker came back at another address"
            events = wait_events(settings, {url})
        assert events[url].state == "cached" and events[url].sha256 == hashlib.sha256(body).hexdigest()
        assert origin.gets["/slow.bin"] == 1
    finally:
        origin.stop()
        broker.stop()
