"""Fixtures that start real services on free ports and wait until they answer.

One Kafka broker per test session (per xdist worker; unique topic names per test), a private
MariaDB per test that needs one (on a copy of one initialised data directory), aria2c and a
dnsmasq upstream. Nothing is mocked: a fixture that cannot start its service fails the test
with the reason.
"""

from __future__ import annotations

import gc
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from heatcache.netutil import terminate
from heatcache.services.aria2 import Aria2Daemon
from heatcache.services.dnsmasq import Dnsmasq
from heatcache.services.kafka import EmbeddedKafka, ensure_topics, make_pki
from heatcache.services.mariadb import MariaDB
from heatcache.settings import Settings, load_settings


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Integration tests are the ones under tests/integration or using a service fixture.
    services = {"kafka", "kafka_broker", "kafka_settings", "kafka_tls_settings", "mariadb", "aria2", "dnsmasq",
                "dnsmasq_factory", "lab"}
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if "integration" in item.nodeid.split("/") or fixtures & services:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedKafka]:
    """A real Apache Kafka (KRaft) broker for the whole session: a PLAINTEXT listener and a TLS
    one requiring client certificates (as k8s's Strimzi listener), certificates from a test CA."""
    root = tmp_path_factory.mktemp("kafka")
    broker = EmbeddedKafka(root / "broker", heap_mb=384, pki=make_pki(root / "pki"), fast_start=True)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def kafka(kafka_broker: EmbeddedKafka) -> str:
    """Bootstrap address (PLAINTEXT) of the session's broker."""
    return kafka_broker.bootstrap


@pytest.fixture
def base_settings(tmp_path: Path) -> Settings:
    """Settings isolated in tmp_path with a unique topic prefix (environment ignored); an
    embedded broker they start (`heatcache up` in a test) has its JVM tuned for start-up."""
    return load_settings(state_dir=tmp_path / "state", topic_prefix=f"t{uuid.uuid4().hex[:10]}-",
                         client_id_secret="test-secret", lab_mode=True, kafka_fast_start=True)


@pytest.fixture
def kafka_settings(kafka: str, base_settings: Settings) -> Settings:
    settings = base_settings.model_copy(update={"kafka_bootstrap": kafka})
    ensure_topics(kafka, settings)
    return settings


@pytest.fixture
def kafka_tls_settings(kafka_broker: EmbeddedKafka, base_settings: Settings) -> Settings:
    """Settings reaching the session broker ONLY through its TLS listener, with a client cert."""
    pki = kafka_broker.pki
    assert pki is not None
    settings = base_settings.model_copy(update={
        "kafka_bootstrap": kafka_broker.tls_bootstrap, "kafka_security_protocol": "SSL",
        "kafka_ssl_ca": pki.ca, "kafka_ssl_cert": pki.client_cert, "kafka_ssl_key": pki.client_key})
    ensure_topics(settings.kafka_bootstrap, settings)
    return settings


@pytest.fixture(scope="session")
def mariadb_datadir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory initialised once per session (mariadb-install-db takes seconds), with
    the `heatcache` database, shut down cleanly: each test's server starts on a copy of it."""
    template = MariaDB(tmp_path_factory.mktemp("mariadb-template"))
    template.start()
    terminate(template.proc, 30)  # a clean shutdown; the data directory stays
    return template.datadir


@pytest.fixture
def mariadb(tmp_path_factory: pytest.TempPathFactory, mariadb_datadir: Path) -> Iterator[MariaDB]:
    """A private mariadbd of this test's own (it may be killed), on a copy of the session's
    initialised data directory (mariadb-install-db finds it set up and does nothing)."""
    server = MariaDB(tmp_path_factory.mktemp("mariadb"))
    shutil.copytree(mariadb_datadir, server.datadir)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def aria2(tmp_path: Path) -> Iterator[Aria2Daemon]:
    daemon = Aria2Daemon(tmp_path / "aria2", secret="s3cret")
    daemon.start()
    yield daemon
    daemon.stop()


StartDnsmasq = Callable[..., Dnsmasq]


@pytest.fixture
def dnsmasq_factory() -> Iterator[StartDnsmasq]:
    """Start a dnsmasq upstream answering the given names (``records``, ``txt=``); each one
    started is stopped after the test."""
    started: list[Dnsmasq] = []

    def start(records: Mapping[str, str], txt: Mapping[str, list[str]] | None = None) -> Dnsmasq:
        server = Dnsmasq(records, txt=txt)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def dnsmasq(dnsmasq_factory: StartDnsmasq) -> Dnsmasq:
    return dnsmasq_factory({"origin.lab.test": "127.0.0.2", "internal.lab.test": "10.1.2.3"})


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    """Collect after each test, so a leaked socket or transport fails the test that leaked it."""
    yield
    gc.collect()
