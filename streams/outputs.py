"""What the streams worker writes, through one confluent-kafka producer, in delivery generations.

Faust's own producer (aiokafka: batching, lz4 and the request loop in Python on the event
loop) was most of the worker's time: every HotUrl, host-heat record and state record went
through it. librdkafka does the batching, compression and network I/O on its own threads, so
the event loop only hands over bytes (a few µs per message).

At-least-once needs one thing from the outputs: to know when everything sent *before a flush*
is acknowledged, so the messages that produced it can be acked (and their offsets committed).
Every message belongs to the current :class:`Generation`; :meth:`Outputs.seal` closes it and
returns a future resolved once all of its messages are delivered (or failed for good: the
producer retries for ever, ``message.timeout.ms=0``, so only a permanent error such as a
message too large ends a delivery as failed).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

log = logging.getLogger(__name__)


class DeliveryFailed(RuntimeError):
    """A message of a generation was refused for good by the broker."""


class Generation:
    """The messages sent between two seals; ``done`` resolves when all are delivered."""

    __slots__ = ("_lock", "changelog", "delivered", "done", "error", "loop", "sealed", "sent", "topic_changelog")

    def __init__(self, loop: asyncio.AbstractEventLoop, changelog: str) -> None:
        self.loop = loop
        self.sent = 0  # only the event loop's thread counts up
        self.delivered = 0  # only the producer's poll thread counts up
        self.sealed = False
        self.error: str | None = None
        self.done: asyncio.Future[dict[int, int]] = loop.create_future()
        self.topic_changelog = changelog
        self.changelog: dict[int, int] = {}  # changelog partition -> newest offset delivered
        self._lock = threading.Lock()

    def on_delivery(self, err: KafkaError | None, msg: Message) -> None:  # the poll thread
        with self._lock:
            self.delivered += 1
            if err is not None:
                self.error = self.error or f"{msg.topic()}: {err.str()}"
            elif msg.topic() == self.topic_changelog:
                p, off = msg.partition() or 0, msg.offset() or 0
                if off > self.changelog.get(p, -1):
                    self.changelog[p] = off
            finished = self.sealed and self.delivered == self.sent
        if finished:
            self.loop.call_soon_threadsafe(self._finish)

    def seal(self) -> None:  # the event loop's thread
        with self._lock:
            self.sealed = True
            finished = self.delivered == self.sent
        if finished:
            self._finish()

    def _finish(self) -> None:
        if self.done.done():
            return
        if self.error is not None:
            self.done.set_exception(DeliveryFailed(self.error))
        else:
            self.done.set_result(self.changelog)


class Outputs:
    """The worker's producer: send() from the event loop, seal() per flush."""

    def __init__(self, producer: Producer, loop: asyncio.AbstractEventLoop, changelog_topic: str = "") -> None:
        self.producer = producer
        self.loop = loop
        self.changelog_topic = changelog_topic
        self.gen = Generation(loop, changelog_topic)
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="streams-outputs", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(0.1)

    def send(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None) -> None:
        gen = self.gen
        kwargs: dict[str, Any] = {"key": key, "value": value, "on_delivery": gen.on_delivery}
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                self.producer.produce(topic, **kwargs)
                break
            except BufferError:  # librdkafka's queue is full: let it drain (rare, brief)
                self.producer.poll(0.05)
        gen.sent += 1

    def seal(self) -> asyncio.Future[dict[int, int]]:
        """Close the current generation; its future gives the changelog's newest offsets."""
        gen, self.gen = self.gen, Generation(self.loop, self.changelog_topic)
        gen.seal()
        return gen.done

    def pending(self) -> int:
        return len(self.producer)

    def flush(self, timeout: float) -> int:
        """Block until everything sent is delivered (rebalance, stop); what is left."""
        return int(self.producer.flush(timeout))

    def close(self, timeout: float = 10.0) -> None:
        left = self.flush(timeout)
        if left:
            log.warning("%d messages not delivered at stop (their input is not acked: re-read at restart)", left)
        self._stop.set()
        self._poller.join(2)
