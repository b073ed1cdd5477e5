"""Kafka over TLS, as the k8s deployment runs it (Strimzi's TLS listener, a client certificate per
stage): the session broker's TLS listener requires a client certificate, and the stages reach it
with nothing but ``HEATCACHE_KAFKA_SECURITY_PROTOCOL=SSL`` + ``HEATCACHE_KAFKA_SSL_*``.

One path through the real stage code: the sniffer's producer publishes a capture into `requests`,
a real `heatcache streams` worker (Faust with the TLS context, its confluent-kafka followers and
the runner's `metrics` producer) admits hot URLs, they are read back over TLS, and the console's
feed (`heatcache status --json`) shows them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from confluent_kafka import KafkaException

from heatcache import contract
from heatcache.contract import HotUrl, RequestBatch
from heatcache.kafkautil import admin, read_topic
from heatcache.lifecycle import StopFlag
from heatcache.settings import Settings
from heatcache.stack import settings_env
from sniffer.app import Sniffer
from sniffer.synth import generate
from streams.heat import PartitionHeat
from streams.rules import rules_from_settings
from tests.faults.stackproc import wait_for
from tests.streams.conftest import Workers, streams_settings


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    ws = Workers(tmp_path)
    yield ws
    ws.stop_all()


def test_settings_without_a_client_certificate_are_refused(kafka_tls_settings: Settings) -> None:
    # the listener really is TLS with client authentication: what the stages pass is what makes it work
    assert admin(kafka_tls_settings.kafka_bootstrap, kafka_tls_settings).list_topics(timeout=20).brokers
    bare = kafka_tls_settings.model_copy(update={"kafka_ssl_cert": None, "kafka_ssl_key": None})
    with pytest.raises(KafkaException):
        admin(bare.kafka_bootstrap, bare).list_topics(timeout=3)


def test_sniffer_to_streams_over_tls(kafka_tls_settings: Settings, tmp_path: Path, workers: Workers) -> None:
    s = streams_settings(kafka_tls_settings)
    assert s.kafka_client_config()["security.protocol"] == "SSL"
    traffic = generate(400, seed=11, urls=60, clients=40)  # few URLs: several reach 2 clients
    pcap = tmp_path / "campus.pcap"
    traffic.write_pcap(pcap)
    sniffer = Sniffer(s.model_copy(update={"sniff_pcap": pcap, "batch_linger_ms": 20}), s.kafka_bootstrap)
    counters = sniffer.run(StopFlag())
    msgs = read_topic(s.kafka_bootstrap, s.topic(contract.REQUESTS), timeout=20, settings=s)
    assert counters["published"] > 0
    assert sum(len(contract.decode(m.value(), RequestBatch).events) for m in msgs) == counters["published"]

    # what the pure core admits on these messages is what the worker must emit
    rules = rules_from_settings(s)
    parts: dict[int, PartitionHeat] = {}
    want: set[str] = set()
    for m in sorted(msgs, key=lambda m: (m.partition(), m.offset())):
        ph = parts.setdefault(m.partition(), PartitionHeat(m.partition(), rules))
        want.update(h.cache_key for h in ph.fold(m.offset(), contract.decode(m.value(), RequestBatch).events).hot)
    assert want

    workers.start(s)

    def hot() -> set[str]:
        return {contract.decode(m.value(), HotUrl).cache_key
                for m in read_topic(s.kafka_bootstrap, s.topic(contract.HOT_URLS), timeout=10, settings=s)}

    wait_for(lambda: hot() == want, timeout=90, what="the worker's HotUrls over TLS")

    def streams_snapshot() -> bool:  # the runner's metrics producer, over TLS too
        return any(orjson.loads(m.value()).get("stage") == "streams"
                   for m in read_topic(s.kafka_bootstrap, s.topic(contract.METRICS), timeout=10, settings=s))

    wait_for(streams_snapshot, timeout=60, what="a streams metrics snapshot")

    # the console's feed (here `heatcache status --json` without a console: it reads the topics
    # itself) over TLS as well: the top of the same hot URLs
    env = {**os.environ, **settings_env(s), "HEATCACHE_CONSOLE_PORT": "1"}
    out = subprocess.run([sys.executable, "-m", "heatcache.cli", "status", "--json"], env=env,
                         capture_output=True, timeout=90, check=True)
    snap = json.loads(out.stdout)
    assert snap["source"] == "direct"
    shown = {h["cache_key"] for h in snap["heat"]["urls"]}  # its top-N of the hot URLs
    assert shown and shown <= want, (shown, want)
