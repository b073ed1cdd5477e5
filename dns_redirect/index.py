"""What is cached, rebuilt from the compacted `cache-events` topic: a pure index plus the thread
that reads the topic and hands each change to the serving loop, the index's only writer."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import Message

from dns_redirect.ports import key_port
from heatcache import contract
from heatcache.cachekey import key_host
from heatcache.contract import CacheEvent, DecodeError
from heatcache.kafkautil import Follower, HealthLike

try:
    from dns_redirect import _index
except ImportError:  # not built (no compiler): CacheIndex.apply below does the same, slower
    _index = None  # type: ignore[assignment]
else:
    _index.setup(key_host, key_port, Counter, time.monotonic)

log = logging.getLogger(__name__)


def compiled_available() -> bool:
    """Whether the compiled CacheIndex.apply (dns_redirect._index) was built and imports."""
    return _index is not None


class CacheIndex:
    """cache_key -> cached object, and host -> number of cached objects (pure, no I/O).

    One writer: the serving loop (``CacheEventsFollower`` hands it every change). Readers on the
    same loop memoize answers by ``version``, so the version moves only once a change is complete:
    a reader that sees the new version sees the new state.

    :meth:`apply` has a compiled twin (dns_redirect/_index.c: the same operations on the same
    objects, for replay's millions of changes); ``compiled`` None = when built, False = this
    Python reference, True = required. tests/dns_redirect/test_index.py holds them equal."""

    PARSED_MAX = 1 << 20  # the memo of parsed keys is cleared when it holds this many

    def __init__(self, compiled: bool | None = None,
                 parsed: dict[str, tuple[str, tuple[str, int]]] | None = None) -> None:
        if compiled and _index is None:
            raise ImportError("dns_redirect._index is not built (./dev builds it; needs gcc and Python headers)")
        self.compiled = _index is not None if compiled is None else compiled
        if self.compiled:
            # an instance attribute over the method: index.apply(event, now) calls C directly
            self.apply = functools.partial(_index.apply, self)  # type: ignore[method-assign]
        self.objects: dict[str, CacheEvent] = {}
        self.hosts: Counter[str] = Counter()
        self.unsteered_at: dict[str, float] = {}  # host -> when its last object went away
        self.host_ports: dict[str, Counter[tuple[str, int]]] = {}  # host -> (scheme, port) of its keys
        # cache_key -> (host, (scheme, port)) of each indexed key, parsed once when it is indexed
        # (replay applies millions of changes: parsing the key again at every drop was a quarter
        # of its time)
        self.where: dict[str, tuple[str, tuple[str, int]]] = {}
        # the same parse for keys indexed before and dropped since (a key evicted and stored
        # again, as replay does millions of times, is not parsed again); bounded. ``parsed``:
        # a memo shared with other indexes over the same keys (replay: one per setting)
        self._parsed: dict[str, tuple[str, tuple[str, int]]] = {} if parsed is None else parsed
        self.version = 0  # bumped after every change: answer memos keyed on it stay correct

    def apply(self, event: CacheEvent, now: float | None = None) -> None:
        key = event.cache_key
        old = self.objects.pop(key, None)
        if old is not None:
            self._drop_host(key, now)
        if event.state == "cached":
            self.objects[key] = event
            where = self._parsed.get(key)
            if where is None:
                if len(self._parsed) >= self.PARSED_MAX:
                    self._parsed.clear()
                where = self._parsed[key] = (key_host(key), key_port(key))
            self.where[key] = where
            host, port = where
            # (get, not Counter's item access: a missing item goes through __missing__)
            hosts = self.hosts
            before = hosts.get(host, 0)
            hosts[host] = before + 1
            ports = self.host_ports.get(host)
            if ports is None:  # (not setdefault: that would build a Counter on every change)
                ports = self.host_ports[host] = Counter()
            ports[port] = ports.get(port, 0) + 1
            if not before:  # a host in ``hosts`` is never in ``unsteered_at`` (_drop_host)
                self.unsteered_at.pop(host, None)
        self.version += 1

    def remove(self, cache_key: str, now: float | None = None) -> None:
        """A tombstone (null value) on the compacted topic."""
        old = self.objects.pop(cache_key, None)
        if old is not None:
            self._drop_host(cache_key, now)
        self.version += 1

    def apply_all(self, changes: list[tuple[str, CacheEvent | None]], now: float | None = None) -> None:
        """Several changes in a row: (key, event), or (key, None) for a tombstone."""
        for key, event in changes:
            if event is None:
                self.remove(key, now)
            else:
                self.apply(event, now)

    def _drop_host(self, cache_key: str, now: float | None) -> None:
        host, port = self.where.pop(cache_key)
        ports = self.host_ports.get(host)
        if ports is not None:
            ports[port] = left = ports.get(port, 0) - 1
            if left <= 0:
                del ports[port]
        hosts = self.hosts
        hosts[host] = left = hosts.get(host, 0) - 1
        if left <= 0:
            del hosts[host]
            self.host_ports.pop(host, None)
            self.unsteered_at[host] = time.monotonic() if now is None else now

    def recently_steered(self, host: str, grace_s: float, now: float | None = None) -> bool:
        """True while clients may still hold a DNS answer pointing here (within ``grace_s``)."""
        since = self.unsteered_at.get(host.lower().rstrip("."))
        return since is not None and (time.monotonic() if now is None else now) - since < grace_s

    def ports_of(self, host: str) -> frozenset[tuple[str, int]]:
        """(scheme, port) of every cached key of ``host``: the ports its clients will use."""
        return frozenset(self.host_ports.get(host.lower().rstrip("."), ()))

    def is_steered(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts

    def get(self, cache_key: str) -> CacheEvent | None:
        return self.objects.get(cache_key)


Change = tuple[str, CacheEvent | None]
DeadLetter = Callable[[Message, str], None]


def decode_change(msg: Message) -> Change:
    """One `cache-events` record as an index change; DecodeError (with the reason) if it is not
    one: a null value is a tombstone, anything else must be a CacheEvent for the record's key."""
    raw_key = msg.key()
    if raw_key is None:
        raise DecodeError("record without a key")
    try:
        key = raw_key.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"key is not UTF-8: {exc}") from None
    value = msg.value()
    if value is None:
        return key, None
    event = contract.decode(value, CacheEvent)
    if event.cache_key != key:
        raise DecodeError(f"record key {key[:80]!r} is not the event's cache_key {event.cache_key[:80]!r}")
    return key, event


class CacheEventsFollower(Follower):
    """Reads `cache-events` from the beginning, then follows it; ``ready`` once caught up.

    The thread only reads and decodes: every change is applied by ``loop`` (the server's), in
    order, so the index has a single writer and never changes under a query being answered.
    ``ready`` is set on the loop too, after the changes that preceded it. A record that does not
    decode goes to ``on_bad`` with the reason (the topic is compacted, so it would otherwise
    be met again at every start) and the follower goes on. Start-up waits, broker loss and the
    ``health`` state are heatcache.kafkautil.Follower's."""

    BATCH = 500

    def __init__(self, bootstrap: str, topic: str, index: CacheIndex, loop: asyncio.AbstractEventLoop,
                 on_bad: DeadLetter | None = None, health: HealthLike | None = None,
                 config: Mapping[str, Any] | None = None) -> None:
        # config: the client security settings (Kafka TLS), kafkautil.client_config(settings)
        super().__init__(bootstrap, [topic], name="cache-events", batch=self.BATCH, health=health,
                         require_topics=True, config=config)
        self.topic = topic
        self.index = index
        self.loop = loop
        self.on_bad = on_bad  # the error policy's dead-letter (heatcache dns/edge pass one)
        self.errors = 0
        self.applied = 0  # changes applied on the loop (read there, or after a join)

    def _apply(self, changes: list[Change], caught_up: bool) -> None:  # on the loop
        self.index.apply_all(changes)
        self.applied += len(changes)
        if caught_up:
            self.ready.set()

    def on_caught_up(self) -> None:
        pass  # ``ready`` is set on the loop, after the changes before it (see _apply)

    def handle(self, msgs: list[Message], caught_up: bool) -> None:
        changes: list[Change] = []
        for msg in msgs:
            try:
                changes.append(decode_change(msg))
            except Exception as exc:  # whatever a record holds, the follower goes on
                self.errors += 1
                reason = str(exc) if isinstance(exc, DecodeError) else f"{type(exc).__name__}: {exc}"
                log.warning("bad cache event at %s[%s]@%s: %s", msg.topic(), msg.partition(),
                            msg.offset(), reason)
                if self.on_bad is not None:
                    self.on_bad(msg, reason)
        try:
            self.loop.call_soon_threadsafe(self._apply, changes, caught_up)
        except RuntimeError:  # the loop is closed: we are stopping
            self.stopping.set()
