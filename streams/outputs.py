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

A message refused for good:

* an output (HotUrl, host heat, metrics): it goes to `dead-letter` with the broker's reason and
  the stage keeps running; the generation (and so the offsets of the inputs that produced it)
  completes only once that dead-letter is acknowledged;
* a state record (the table's changelog) or the dead-letter itself: the state cannot be made
  durable, so the generation fails (:class:`DeliveryFailed`) and nothing after it is acked.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

from confluent_kafka import KafkaError, Message, Producer

from heatcache.contract import dead_letter_value

log = logging.getLogger(__name__)


class DeliveryFailed(RuntimeError):
    """A message of a generation was refused for good by the broker."""


class Generation:
    """The messages sent between two seals; ``done`` resolves when all are delivered."""

    __slots__ = ("_lock", "changelog", "dead_letter", "delivered", "done", "error", "loop", "on_refused", "refused",
                 "sealed", "sent", "topic_changelog")

    def __init__(self, loop: asyncio.AbstractEventLoop, changelog: str, dead_letter: str = "",
                 on_refused: Callable[[list[Refused]], asyncio.Future[None]] | None = None) -> None:
        self.loop = loop
        self.sent = 0  # only the event loop's thread counts up
        self.delivered = 0  # only the producer's poll thread counts up
        self.sealed = False
        self.error: str | None = None
        self.done: asyncio.Future[dict[int, int]] = loop.create_future()
        self.topic_changelog = changelog
        self.changelog: dict[int, int] = {}  # changelog partition -> newest offset delivered
        self.dead_letter = dead_letter
        self.on_refused = on_refused  # sends the refused outputs to dead-letter (the event loop)
        self.refused: list[Refused] = []
        self._lock = threading.Lock()

    def on_delivery(self, err: KafkaError | None, msg: Message) -> None:  # the poll thread
        with self._lock:
            self.delivered += 1
            topic = msg.topic() or ""
            if err is not None:
                if topic in (self.topic_changelog, self.dead_letter) or self.on_refused is None:
                    self.error = self.error or f"{topic}: {err.str()}"
                else:
                    self.refused.append(Refused(topic, msg.partition() or 0, msg.key(), msg.value(), err.str()))
            elif topic == self.topic_changelog:
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
        elif self.refused and self.on_refused is not None:
            # done only once the dead-letters of the refused outputs are acknowledged
            sent = self.on_refused(self.refused)
            self.refused = []
            sent.add_done_callback(self._after_dead_letters)
        else:
            self.done.set_result(self.changelog)

    def _after_dead_letters(self, sent: asyncio.Future[None]) -> None:
        if self.done.done():
            return
        exc = sent.exception()
        if exc is not None:
            self.done.set_exception(exc)
        else:
            self.done.set_result(self.changelog)


class Refused(NamedTuple):
    """An output the broker refused for good (e.g. larger than the topic's max.message.bytes)."""

    topic: str
    partition: int
    key: bytes | None
    value: bytes | None
    reason: str


class Outputs:
    """The worker's producer: send() from the event loop, seal() per flush."""

    def __init__(self, producer: Producer, loop: asyncio.AbstractEventLoop, changelog_topic: str = "",
                 dead_letter_topic: str = "") -> None:
        self.producer = producer
        self.loop = loop
        self.changelog_topic = changelog_topic
        self.dead_letter_topic = dead_letter_topic
        self.refused = 0  # outputs refused for good and sent to dead-letter instead
        self.gen = self._generation()
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
        self._produce(topic, kwargs)
        gen.sent += 1

    def _generation(self) -> Generation:
        return Generation(self.loop, self.changelog_topic, self.dead_letter_topic,
                          self._dead_letters if self.dead_letter_topic else None)

    def _dead_letters(self, refused: list[Refused]) -> asyncio.Future[None]:
        """Send refused outputs to dead-letter (the event loop); the future: all acknowledged."""
        done: asyncio.Future[None] = self.loop.create_future()
        left = [len(refused)]
        lock = threading.Lock()

        def acked(err: KafkaError | None, msg: Message) -> None:  # the poll thread
            with lock:
                left[0] -= 1
                last = left[0] == 0
            if err is not None:
                self.loop.call_soon_threadsafe(_fail, f"{msg.topic()}: {err.str()}")
            elif last:
                self.loop.call_soon_threadsafe(_ok)

        def _fail(why: str) -> None:
            if not done.done():
                done.set_exception(DeliveryFailed(why))

        def _ok() -> None:
            if not done.done():
                done.set_result(None)

        for r in refused:
            self.refused += 1
            log.error("%s refused a message for good (%s): sent to %s", r.topic, r.reason, self.dead_letter_topic)
            value = dead_letter_value(r.topic, r.partition, -1, f"refused by the broker: {r.reason}", r.value)
            self._produce(self.dead_letter_topic, {"key": r.key, "value": value, "on_delivery": acked})
        return done

    def _produce(self, topic: str, kwargs: dict[str, Any]) -> None:
        while True:
            try:
                self.producer.produce(topic, **kwargs)
                return
            except BufferError:  # librdkafka's queue is full: let it drain (rare, brief)
                self.producer.poll(0.05)

    def seal(self) -> asyncio.Future[dict[int, int]]:
        """Close the current generation; its future gives the changelog's newest offsets."""
        gen, self.gen = self.gen, self._generation()
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
