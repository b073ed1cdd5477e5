"""The embedded single-node Apache Kafka broker (KRaft, combined broker and controller).

Kafka's jars come from Maven Central through the ``pom.xml`` shipped next to this package
(``mvn dependency:copy-dependencies``, once, into a per-user cache). The storage is formatted
with Kafka's own ``kafka.tools.StorageTool`` and the data stays in the stack's state directory,
so a restart keeps the topics. Used by ``heatcache up``, the test fixtures and the benchmarks.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import NamedTuple

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from heatcache import contract
from heatcache.netutil import free_port, port_is_free, terminate, wait_for_port
from heatcache.services import maven
from heatcache.services.procs import port_owner, with_parent_death
from heatcache.settings import Settings

log = logging.getLogger(__name__)

LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.out.ref = out
logger.kafka.name = kafka.server.KafkaRaftServer
logger.kafka.level = info
"""


class KafkaSetupError(RuntimeError):
    """The broker could not be resolved, formatted or started; the message says why."""


def pom_path() -> Path:
    return Path(str(resources.files("heatcache").joinpath("kafka/pom.xml")))


def kafka_version() -> str:
    match = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom_path().read_text())
    if not match:
        raise KafkaSetupError("kafka.version missing from pom.xml")
    return match.group(1)


def jar_dir() -> Path:
    """Where the resolved jars live: one folder per pinned version, shared by all stacks."""
    return maven.cache_dir(f"kafka-{kafka_version()}")


def ensure_jars() -> Path:
    """Resolve Kafka's jars with Maven the first time; later calls return the cached folder."""
    try:
        return maven.copy_dependencies(pom_path(), jar_dir(), f"Apache Kafka {kafka_version()}")
    except maven.MavenError as exc:
        raise KafkaSetupError(str(exc)) from exc


def fast_start_archive() -> Path:
    """The class-data archive of Kafka's classes for ``fast_start`` brokers: beside the jars, one
    per Java installation (a JVM ignores, with a warning, an archive another build wrote)."""
    java = Path(shutil.which("java") or "java").resolve()
    try:
        stamp = f"{java}:{java.stat().st_mtime_ns}"
    except OSError:
        stamp = str(java)
    digest = base64.b32encode(hashlib.sha256(stamp.encode()).digest()[:10]).decode().lower()
    return jar_dir() / f"classes-{digest}.jsa"


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes in URL-safe base64, never starting with '-' (as
    Kafka's own Uuid.randomUuid avoids, since tools would read it as an option)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


class KafkaPki(NamedTuple):
    """A throw-away CA with a broker certificate (127.0.0.1/localhost) and one client certificate,
    as PEM files: the TLS listener of the embedded broker and its clients (tests, lab)."""

    ca: Path
    broker: Path  # the broker's private key followed by its certificate (Kafka's PEM keystore)
    client_cert: Path
    client_key: Path


def make_pki(folder: Path, client: str = "heatcache-client") -> KafkaPki:
    """Create a CA, the broker's and a client's certificate in ``folder`` with the openssl CLI."""
    folder.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        proc = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise KafkaSetupError(f"openssl {args[0]} failed: {proc.stderr[-1000:]}")

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    ca, ca_key = folder / "ca.pem", folder / "ca-key.pem"
    run("req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca), "-days", "2", "-subj", "/CN=heatcache test CA")
    for name, san in (("broker", "IP:127.0.0.1,DNS:localhost"), (client, "")):
        key, csr, cert = folder / f"{name}-key.pem", folder / f"{name}.csr", folder / f"{name}.pem"
        run("req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")
        ext = folder / f"{name}.ext"
        ext.write_text(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
        run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
            "-days", "2", "-out", str(cert), "-extfile", str(ext))
    bundle = folder / "broker-keystore.pem"
    bundle.write_text((folder / "broker-key.pem").read_text() + (folder / "broker.pem").read_text())
    return KafkaPki(ca, bundle, folder / f"{client}.pem", folder / f"{client}-key.pem")


class EmbeddedKafka:
    """One KRaft broker+controller process with its data under ``data_dir``; with ``pki`` also a
    TLS listener (client certificates required, as Strimzi's TLS listener with tls users) on
    ``tls_bootstrap``."""

    def __init__(self, data_dir: Path, port: int = 0, heap_mb: int = 384, pki: KafkaPki | None = None,
                 fast_start: bool = False) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.requested_port = port
        self.heap_mb = heap_mb
        self.port = 0
        self.tls_port = 0
        self.pki = pki
        # JVM tuned for start-up (HEATCACHE_KAFKA_FAST_START): C1 JIT only and the class-data
        # archive of fast_start_archive(), written at the first clean stop when missing. A start
        # takes about a third of the CPU; the broker's peak throughput is lower (tests, labs)
        self.fast_start = fast_start
        self._dumping: Path | None = None  # the archive this JVM writes at its exit
        self.proc: subprocess.Popen[bytes] | None = None
        self._held: socket.socket | None = None  # the client port kept while stopped (stop(hold=True))

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def tls_bootstrap(self) -> str:
        return f"127.0.0.1:{self.tls_port}" if self.tls_port else ""

    def _tls_lines(self) -> list[str]:
        if self.pki is None:
            return []
        return [
            "ssl.keystore.type=PEM",
            f"ssl.keystore.location={self.pki.broker}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={self.pki.ca}",
            "ssl.client.auth=required",
        ]

    def _ports(self) -> tuple[int, int]:
        # Reuse the previous ports when free, so a restarted stack keeps its address. Only the
        # client port is an address others hold: a taken controller port moves alone (it used
        # to move the client port with it, and every client kept asking the old address).
        saved = self.data_dir / "ports"
        if self.requested_port:
            broker = self.requested_port
            if not port_is_free(broker):
                raise KafkaSetupError(f"Kafka port {broker} is held by {port_owner(broker) or 'another process'}")
            ctrl = int(saved.read_text().split()[1]) if saved.exists() else free_port()
        elif saved.exists():
            broker, ctrl = map(int, saved.read_text().split())
            if not port_is_free(broker):
                broker = free_port()
        else:
            broker, ctrl = free_port(), free_port()
        if not port_is_free(ctrl) or ctrl == broker:
            ctrl = free_port()
        saved.write_text(f"{broker} {ctrl}\n")
        return broker, ctrl

    def start(self, timeout: float = 90.0) -> str:
        jars = ensure_jars()
        if shutil.which("java") is None:
            raise KafkaSetupError("a Java 17 runtime is needed for Kafka: apt-get install openjdk-17-jre-headless")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._release()
        self.port, ctrl = self._ports()
        self.tls_port = free_port() if self.pki is not None else 0
        tls = f",SSL://127.0.0.1:{self.tls_port}" if self.pki is not None else ""
        logs = self.data_dir / "logs"
        config = self.data_dir / "server.properties"
        (self.data_dir / "log4j2.properties").write_text(LOG4J2)
        config.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{ctrl}",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port}{tls},CONTROLLER://127.0.0.1:{ctrl}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}{tls}",
                    "controller.listener.names=CONTROLLER",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SSL:SSL,CONTROLLER:PLAINTEXT",
                    "inter.broker.listener.name=PLAINTEXT",
                    f"log.dirs={logs}",
                    "num.partitions=1",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=3",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    # One machine, one member per group: joining should not wait.
                    "group.initial.rebalance.delay.ms=0",
                    "auto.create.topics.enable=false",
                    "log.segment.bytes=67108864",
                    "log.cleaner.backoff.ms=5000",
                    *self._tls_lines(),
                    "",
                ]
            )
        )
        java = ["java", f"-Xmx{self.heap_mb}m", f"-Xms{min(self.heap_mb, 128)}m", "-XX:+UseSerialGC",
                f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
                *self._fast_start_flags(), "-cp", f"{jars}/*"]
        if not (logs / "meta.properties").exists():
            shutil.rmtree(logs, ignore_errors=True)
            proc = subprocess.run(
                [*java, "kafka.tools.StorageTool", "format", f"--cluster-id={new_cluster_id()}", "-c", str(config)],
                capture_output=True, text=True, check=False,
            )
            if proc.returncode != 0:
                raise KafkaSetupError(f"formatting Kafka storage failed:\n{proc.stdout}{proc.stderr}")
        out = open(self.data_dir / "broker.log", "ab")
        if self.fast_start and not fast_start_archive().exists():
            # this broker's classes are archived when it exits cleanly (stop()), for the next starts
            self._dumping = fast_start_archive().with_suffix(f".{os.getpid()}.{id(self)}.tmp")
            java.insert(1, f"-XX:ArchiveClassesAtExit={self._dumping}")
        self.proc = subprocess.Popen(with_parent_death([*java, "kafka.Kafka", str(config)]), stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        deadline = time.monotonic() + timeout
        if not wait_for_port("127.0.0.1", self.port, timeout, alive=self.proc):
            self.stop()
            raise KafkaSetupError(f"Kafka did not open port {self.port}; see {self.data_dir / 'broker.log'}")
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        while time.monotonic() < deadline:
            try:
                md = admin.list_topics(timeout=5)
                if md.brokers:
                    return self.bootstrap
            except KafkaException:
                pass
            time.sleep(0.2)
        self.stop()
        raise KafkaSetupError("Kafka did not answer metadata requests in time")

    def _release(self) -> None:
        if self._held is not None:
            self._held.close()
            self._held = None

    def _fast_start_flags(self) -> list[str]:
        if not self.fast_start:
            return []
        archive = fast_start_archive()
        return ["-XX:TieredStopAtLevel=1", *([f"-XX:SharedArchiveFile={archive}"] if archive.exists() else [])]

    def stop(self, timeout: float = 30.0, hold: bool = False) -> None:
        """SIGTERM: Kafka shuts down cleanly and flushes its logs; kill if it hangs.

        ``hold``: keep the client port until the next :meth:`start` (a fault test's outage):
        a socket bound there without listening, so clients are refused as by a stopped broker
        and no other process can take the port meanwhile (then the broker would come back at
        another address, and its clients, which keep the old one, never reach it)."""
        proc, dumping, self._dumping = self.proc, self._dumping, None
        terminate(proc, timeout)
        self.proc = None
        self._release()
        if hold and self.port:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # no SO_REUSEADDR: exclusive
            try:
                sock.bind(("127.0.0.1", self.port))
            except OSError:
                sock.close()
            else:
                self._held = sock
        if dumping is not None and dumping.exists():
            # a JVM that exited by itself has written the whole archive; one killed has not
            if proc is not None and proc.returncode is not None and proc.returncode >= 0:
                os.replace(dumping, fast_start_archive())
            else:
                dumping.unlink(missing_ok=True)


class TopicPlan(NamedTuple):
    """One topic as the launcher creates it: full name, partitions and topic configs."""

    name: str
    partitions: int
    config: dict[str, str]


def topic_plan(settings: Settings, names: Iterable[str] = contract.ALL_TOPICS) -> list[TopicPlan]:
    """What ensure_topics creates (pure): the Kubernetes manifests' KafkaTopics are checked against it.

    `requests`, `hot-urls` and `cache-events` are co-partitioned with the streams tables."""
    plan = []
    for name in names:
        config = {"cleanup.policy": "compact"} if name in contract.COMPACTED_TOPICS else {}
        parts = settings.kafka_partitions if name in (contract.REQUESTS, contract.HOT_URLS) else 1
        if name == contract.CACHE_EVENTS:
            parts = settings.kafka_partitions
        plan.append(TopicPlan(settings.topic(name), parts, config))
    return plan


def ensure_topics(bootstrap: str, settings: Settings, names: Iterable[str] = contract.ALL_TOPICS,
                  timeout: float = 30.0) -> None:
    """Create the stage topics when missing (requests co-partitioned with the streams tables)."""
    admin = AdminClient({"bootstrap.servers": bootstrap, **settings.kafka_client_config()})
    existing = set(admin.list_topics(timeout=timeout).topics)
    new = [NewTopic(t.name, num_partitions=t.partitions, replication_factor=1, config=t.config)
           for t in topic_plan(settings, names) if t.name not in existing]
    if not new:
        return
    for topic, fut in admin.create_topics(new, operation_timeout=timeout).items():
        try:
            fut.result()
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise KafkaSetupError(f"creating topic {topic}: {exc}") from None
