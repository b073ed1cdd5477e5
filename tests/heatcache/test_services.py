"""Integration tests for the service launchers (heatcache/services/*): each starts the real
program and talks to it with its real client."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from pathlib import Path

import aria2p
import dns.message
import dns.query
import pymysql
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from heatcache import contract
from heatcache.kafkautil import read_topic
from heatcache.netutil import free_port, port_is_free
from heatcache.services.aria2 import Aria2Daemon
from heatcache.services.dnsmasq import Dnsmasq
from heatcache.services.kafka import EmbeddedKafka, ensure_topics, fast_start_archive, kafka_version
from heatcache.services.mariadb import MariaDB
from heatcache.settings import Settings


def test_kafka_round_trip_and_topics(kafka: str, kafka_settings: Settings) -> None:
    md = AdminClient({"bootstrap.servers": kafka}).list_topics(timeout=10)
    requests = md.topics[kafka_settings.topic(contract.REQUESTS)]
    assert len(requests.partitions) == kafka_settings.kafka_partitions
    prod = Producer({"bootstrap.servers": kafka})
    topic = kafka_settings.topic(contract.HOT_URLS)
    for i in range(10):
        prod.produce(topic, key=b"k%d" % i, value=b"v%d" % i)
    assert prod.flush(10) == 0
    values = sorted(m.value() for m in read_topic(kafka, topic))
    assert values == sorted(b"v%d" % i for i in range(10))


def test_cache_events_topic_is_compacted(kafka: str, kafka_settings: Settings) -> None:
    from confluent_kafka.admin import ConfigResource

    admin = AdminClient({"bootstrap.servers": kafka})
    res = ConfigResource("topic", kafka_settings.topic(contract.CACHE_EVENTS))
    configs = admin.describe_configs([res])[res].result()
    assert configs["cleanup.policy"].value == "compact"


def test_broker_restart_keeps_topics_and_data(tmp_path: Path, base_settings: Settings) -> None:
    broker = EmbeddedKafka(tmp_path / "k", fast_start=True)
    bootstrap = broker.start()
    try:
        ensure_topics(bootstrap, base_settings)
        prod = Producer({"bootstrap.servers": bootstrap})
        prod.produce(base_settings.topic(contract.CACHE_EVENTS), key=b"k", value=b"kept")
        assert prod.flush(10) == 0
    finally:
        broker.stop()
    assert (tmp_path / "k" / "logs" / "meta.properties").exists()
    # fast start: a clean stop left the class-data archive (when there was none), the next start uses it
    assert fast_start_archive().exists()
    logged = (tmp_path / "k" / "broker.log").stat().st_size
    bootstrap = broker.start()
    try:
        assert broker.proc is not None
        cmdline = Path(f"/proc/{broker.proc.pid}/cmdline").read_bytes().split(b"\0")
        assert f"-XX:SharedArchiveFile={fast_start_archive()}".encode() in cmdline
        assert b"-XX:TieredStopAtLevel=1" in cmdline
        msgs = read_topic(bootstrap, base_settings.topic(contract.CACHE_EVENTS))
        assert [m.value() for m in msgs] == [b"kept"]
    finally:
        broker.stop()
    log = (tmp_path / "k" / "broker.log").read_bytes()[logged:].decode(errors="replace")
    assert "[cds]" not in log, log[-2000:]  # the archive was taken, not refused with a warning
    assert kafka_version().startswith("4.")


def test_consumer_group_joins_quickly(kafka: str, kafka_settings: Settings) -> None:
    topic = kafka_settings.topic(contract.METRICS)
    prod = Producer({"bootstrap.servers": kafka})
    prod.produce(topic, value=b"{}")
    prod.flush(10)
    cons = Consumer({"bootstrap.servers": kafka, "group.id": kafka_settings.topic_prefix + "g",
                     "auto.offset.reset": "earliest"})
    cons.subscribe([topic])
    start = time.monotonic()
    msg = None
    while msg is None and time.monotonic() - start < 20:
        msg = cons.poll(0.5)
    cons.close()
    assert msg is not None and msg.value() == b"{}"


def test_mariadb_private_server(mariadb: MariaDB) -> None:
    conn = pymysql.connect(host="127.0.0.1", port=mariadb.port, user="root", database="heatcache")
    with conn, conn.cursor() as cur:
        cur.execute("SELECT VERSION()")
        row = cur.fetchone()
        assert row is not None and "MariaDB" in row[0]
    base = mariadb.base_dir
    mariadb.stop()
    assert not base.exists()


def test_aria2_downloads_through_rpc(aria2: Aria2Daemon, tmp_path: Path) -> None:
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "f.bin").write_bytes(b"x" * 100_000)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a: object, **kw: object) -> None:
            super().__init__(*a, directory=str(tmp_path / "www"), **kw)  # type: ignore[arg-type]

        def log_message(self, *_a: object) -> None:
            pass

        def do_GET(self) -> None:
            self.server.hosts.append(self.headers.get("Host"))  # type: ignore[attr-defined]
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.hosts = []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        api = aria2p.API(aria2p.Client(host="http://127.0.0.1", port=aria2.port, secret="s3cret"))
        dl = api.add_uris([f"http://127.0.0.1:{server.server_address[1]}/f.bin"],
                          options={"dir": str(tmp_path / "out"), "header": ["Host: origin.example:8080"]})
        deadline = time.monotonic() + 20
        while dl.status != "complete" and time.monotonic() < deadline:
            time.sleep(0.1)
            dl.update()
        assert dl.status == "complete"
        assert (tmp_path / "out" / "f.bin").read_bytes() == b"x" * 100_000
        # the fetcher pins the address and sends the original Host: aria2 must not add its own
        assert server.hosts == ["origin.example:8080"]  # type: ignore[attr-defined]
        bad = aria2p.API(aria2p.Client(host="http://127.0.0.1", port=aria2.port, secret="wrong"))
        try:
            bad.get_stats()
            raise AssertionError("aria2 accepted a wrong RPC secret")
        except aria2p.ClientException:
            pass
    finally:
        server.shutdown()
        server.server_close()


def test_dnsmasq_upstream(dnsmasq: Dnsmasq) -> None:
    resp = dns.query.udp(dns.message.make_query("origin.lab.test", "A"), "127.0.0.1", port=dnsmasq.port, timeout=2)
    assert [r.to_text() for rrset in resp.answer for r in rrset] == ["127.0.0.2"]


def test_a_taken_controller_port_moves_alone(tmp_path: Path) -> None:
    """A restart finds its controller port taken: only that port moves; the client port, the
    address every client keeps, stays (both used to move)."""
    broker_port, ctrl = free_port(), free_port()
    (tmp_path / "ports").write_text(f"{broker_port} {ctrl}\n")
    with socket.socket() as taker:
        taker.bind(("127.0.0.1", ctrl))
        taker.listen()
        got = EmbeddedKafka(tmp_path)._ports()
    assert got[0] == broker_port and got[1] not in (ctrl, broker_port)
    assert (tmp_path / "ports").read_text().split() == [str(p) for p in got]


def test_a_held_port_refuses_clients_and_binders(tmp_path: Path) -> None:
    """stop(hold=True) keeps the client port until the next start: a client is refused as by a
    stopped broker, and no other server can take the port meanwhile."""
    broker = EmbeddedKafka(tmp_path)
    broker.port = free_port()
    broker.stop(hold=True)
    try:
        assert not port_is_free(broker.port)
        with socket.socket() as client, pytest.raises(ConnectionRefusedError):
            client.connect(("127.0.0.1", broker.port))
    finally:
        broker._release()
    assert port_is_free(broker.port)


def test_cluster_ids_never_look_like_options() -> None:
    from heatcache.services.kafka import new_cluster_id

    ids = {new_cluster_id() for _ in range(3000)}
    assert len(ids) == 3000 and not any(i.startswith("-") for i in ids) and all(len(i) == 22 for i in ids)


def test_maven_jars_resolved_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder marked complete is used as it is (no Maven asked); without it and without mvn:
    the reason, and nothing half-made left in its place."""
    from heatcache.services.maven import MavenError, cache_dir, copy_dependencies

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no mvn on it
    target = cache_dir("thing-1.0")
    assert target == tmp_path / "cache" / "heatcache" / "thing-1.0"
    with pytest.raises(MavenError, match=r"Maven \(mvn\) is needed once to fetch the jars of thing 1.0"):
        copy_dependencies(tmp_path / "pom.xml", target, "thing 1.0")
    assert not target.exists()
    (target / "a.jar").parent.mkdir(parents=True)
    (target / ".complete").touch()
    assert copy_dependencies(tmp_path / "pom.xml", target, "thing 1.0") == target
