"""confluent-kafka glue shared by the stages: client configs, dead-lettering, metrics records."""

from __future__ import annotations

import logging
import ssl
import time
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from heatcache import contract
from heatcache.settings import Settings

log = logging.getLogger(__name__)


# -- client security (Kafka TLS): every client of every stage is built with this ---------------

def client_config(settings: Settings | None) -> dict[str, Any]:
    """The security part of a librdkafka client's config: ``security.protocol`` and the ``ssl.*``
    files for a TLS listener (k8s: Strimzi's TLS listener with per-stage client certs), ``{}`` for
    PLAINTEXT or when no settings are given (tools and tests on the local broker)."""
    return settings.kafka_client_config() if settings is not None else {}


def admin(bootstrap: str, settings: Settings | None = None) -> AdminClient:
    """An AdminClient (metadata, topic creation) with the client security settings."""
    return AdminClient({"bootstrap.servers": bootstrap, **client_config(settings)})


def ssl_context(settings: Settings | None) -> ssl.SSLContext | None:
    """The TLS context for Python Kafka clients (Faust/aiokafka ``broker_credentials``) from the
    same settings as :func:`client_config`; None for PLAINTEXT. Verifies the broker against
    ``kafka_ssl_ca`` (hostname included) and presents the client certificate when one is set."""
    if settings is None or settings.kafka_security_protocol != "SSL":
        return None
    ca = settings.kafka_ssl_ca
    ctx = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    if settings.kafka_ssl_cert is not None:
        key = settings.kafka_ssl_key
        ctx.load_cert_chain(str(settings.kafka_ssl_cert), str(key) if key is not None else None)
    return ctx


def producer(bootstrap: str, settings: Settings | None = None, **extra: Any) -> Producer:
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "linger.ms": 20,
        "compression.type": "lz4",
        "enable.idempotence": True,
        "queue.buffering.max.messages": 200_000,
        "message.timeout.ms": 120_000,
        **client_config(settings),
    }
    config.update(extra)
    return Producer(config)


def consumer(bootstrap: str, group: str, settings: Settings | None = None, **extra: Any) -> Consumer:
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        # Offsets are stored after a message is handled and committed in the background and at
        # close: at-least-once, which every stage tolerates (its work is idempotent per key).
        "enable.auto.commit": True,
        "enable.auto.offset.store": False,
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 1_000,
        **client_config(settings),
    }
    config.update(extra)
    return Consumer(config)


def dead_letter(prod: Producer, settings: Settings, msg: Message, reason: str) -> None:
    """Send an undecodable message to `dead-letter` with where it came from and why."""
    log.warning("dead-letter %s[%s]@%s: %s", msg.topic(), msg.partition(), msg.offset(), reason)
    prod.produce(
        settings.topic(contract.DEAD_LETTER),
        key=msg.key(),
        value=contract.dead_letter_value(
            msg.topic() or "", msg.partition() or 0, msg.offset() or 0, reason, msg.value()
        ),
    )


def publish_metrics(prod: Producer, settings: Settings, stage: str, values: dict[str, Any]) -> None:
    """One flat JSON object a line on the `metrics` topic, keyed by stage."""
    record = {"stage": stage, "node": settings.node_name, "ts": time.time(), **values}
    prod.produce(settings.topic(contract.METRICS), key=stage.encode(), value=orjson.dumps(record))


def assign_from_beginning(cons: Consumer, topic: str, timeout: float = 30.0) -> list[int]:
    """Assign every partition of ``topic`` at its first offset (no group offsets); the partitions."""
    md = cons.list_topics(topic, timeout=timeout)
    parts = list(md.topics[topic].partitions) if topic in md.topics else []
    cons.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    return parts


def read_topic(bootstrap: str, topic: str, timeout: float = 20.0, settings: Settings | None = None) -> list[Message]:
    """Every message now in ``topic`` (all partitions, from the beginning): for tools and tests."""
    cons = Consumer({"bootstrap.servers": bootstrap, "group.id": "heatcache-reader", "enable.auto.commit": False,
                     "enable.partition.eof": True, **client_config(settings)})
    try:
        pending = set(assign_from_beginning(cons, topic, timeout))
        out: list[Message] = []
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            msg = cons.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition())
                continue
            out.append(msg)
        return out
    finally:
        cons.close()
