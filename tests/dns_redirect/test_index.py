"""The cache index (dns_redirect/index.py): versions move only after a change is complete, the
follower applies changes on the server's loop (one writer), and records that do not decode go to
`dead-letter` while the follower goes on."""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dns.message
import dns.rdatatype
import orjson
import pytest
from confluent_kafka import Producer

from dns_redirect import index as index_module
from dns_redirect.index import CacheEventsFollower, CacheIndex
from dns_redirect.ports import key_port
from dns_redirect.server import DnsServer
from heatcache import contract
from heatcache.cachekey import key_host
from heatcache.contract import CacheEvent
from heatcache.kafkautil import dead_letter, read_topic
from heatcache.services.dnsmasq import Dnsmasq
from heatcache.settings import Settings
from tests.loopthread import on_loop_thread

COMPILED = [False, *([True] if index_module.compiled_available() else [])]


@pytest.mark.parametrize("compiled", COMPILED)
def test_the_version_moves_only_after_the_change(compiled: bool) -> None:
    """A reader memoizing by version must never pair the new version with the old state (the
    race of issue 18: the version was bumped first, a query in between memoized the old answer)."""
    index = CacheIndex(compiled=compiled)
    seen: list[int] = []

    class Watching(Counter[str]):
        def __setitem__(self, key: str, value: int) -> None:
            seen.append(index.version)  # what a reader would read while the host set changes
            super().__setitem__(key, value)

        def __delitem__(self, key: str) -> None:
            seen.append(index.version)
            super().__delitem__(key)

    index.hosts = Watching()
    index.apply(CacheEvent("http://a.test/x", "cached", path="objects/aa/x"))
    assert seen == [0] and index.version == 1 and index.is_steered("a.test")
    index.apply(CacheEvent("http://a.test/x", "evicted"), now=5.0)
    assert seen[1:] == [1, 1] and index.version == 2 and not index.is_steered("a.test")
    index.apply_all([("http://b.test/y", CacheEvent("http://b.test/y", "cached", path="p")),
                     ("http://b.test/y", None)], now=6.0)
    assert index.version == 4 and not index.is_steered("b.test") and index.recently_steered("b.test", 1.0, 6.5)


@pytest.mark.parametrize("compiled", COMPILED)
def test_the_index_equals_its_definition_after_random_changes(monkeypatch: pytest.MonkeyPatch,
                                                              compiled: bool) -> None:
    """hosts, host_ports and unsteered_at as the cached objects define them, after random stores,
    evictions and tombstones (keys come back after a drop: the memo of parsed keys, cleared
    often here); the compiled apply leaves exactly the reference's state after every change."""
    monkeypatch.setattr(CacheIndex, "PARSED_MAX", 7)
    rng = random.Random(3)
    keys = [f"{s}://h{h}.test{p}/o{i}" for i in range(12) for h in range(4) for s, p in (("http", ""),
            ("https", ""), ("http", ":8080"))]
    index = CacheIndex(compiled=compiled)
    ref = CacheIndex(compiled=False)
    ended = 0
    for step in range(3000):
        key = rng.choice(keys)
        was_steered = index.is_steered(key_host(key))
        r = rng.random()
        for ix in (index, ref):
            if r < 0.5:
                ix.apply(CacheEvent(key, "cached", size=step), now=float(step))
            elif r < 0.9:
                ix.apply(CacheEvent(key, ("evicted", "purged", "failed")[step % 3]), float(step))
            else:
                ix.remove(key, now=float(step))
        assert (index.objects, index.hosts, index.host_ports, index.unsteered_at, index.where, index._parsed,
                index.version) == (ref.objects, ref.hosts, ref.host_ports, ref.unsteered_at, ref.where, ref._parsed,
                                   ref.version)
        hosts = Counter(key_host(k) for k in index.objects)
        assert index.hosts == hosts
        assert index.host_ports == {h: Counter(key_port(k) for k in index.objects if key_host(k) == h)
                                    for h in hosts}
        assert set(index.where) == set(index.objects)
        assert not set(index.unsteered_at) & set(hosts)
        if was_steered and key_host(key) not in hosts:  # its last object went: unsteered now
            assert index.unsteered_at[key_host(key)] == step
            ended += 1
    assert index.version == 3000 and ended


@pytest.mark.parametrize("compiled", COMPILED)
def test_indexes_sharing_a_parse_memo_hold_what_unshared_ones_hold(compiled: bool) -> None:
    """replay's indexes (one per setting) share one memo of parsed keys: each ends as an index of
    its own would."""
    rng = random.Random(8)
    keys = [f"http://h{i % 5}.test{':81' if i % 3 == 0 else ''}/o{i}" for i in range(40)]
    memo: dict[str, tuple[str, tuple[str, int]]] = {}
    for _ in range(3):
        shared, alone = CacheIndex(compiled=compiled, parsed=memo), CacheIndex(compiled=False)
        for step in range(400):
            ev = CacheEvent(rng.choice(keys), rng.choice(("cached", "cached", "evicted")))
            shared.apply(ev, float(step))
            alone.apply(ev, float(step))
        assert (shared.objects, shared.hosts, shared.host_ports, shared.unsteered_at, shared.where) == (
            alone.objects, alone.hosts, alone.host_ports, alone.unsteered_at, alone.where)
    assert shared._parsed is memo and len(memo) == len(keys)


@contextmanager
def following(settings: Settings, index: CacheIndex, server: DnsServer | None = None,
              dead: Producer | None = None) -> Iterator[CacheEventsFollower]:
    """The follower and (optionally) a DNS server on one loop thread, as `heatcache dns` runs them."""
    box: list[CacheEventsFollower] = []

    def to_dead_letter(msg: object, reason: str) -> None:
        assert dead is not None
        dead_letter(dead, settings, msg, reason)  # type: ignore[arg-type]
        dead.flush(10)

    async def start() -> None:
        f = CacheEventsFollower(settings.kafka_bootstrap, settings.topic(contract.CACHE_EVENTS), index,
                                asyncio.get_running_loop(), to_dead_letter if dead is not None else None)
        box.append(f)
        f.start()
        if server is not None:
            await server.start()

    async def stop() -> None:
        box[0].stop()
        await asyncio.get_running_loop().run_in_executor(None, box[0].join, 5)
        if server is not None:
            await server.stop()

    with on_loop_thread(start, stop, stop_timeout=15):
        assert box[0].wait_ready(30)
        yield box[0]


def wait_applied(follower: CacheEventsFollower, n: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while follower.applied < n:
        assert time.monotonic() < deadline, f"{follower.applied} of {n} changes applied"
        time.sleep(0.005)


def event(key: str, state: str) -> bytes:
    return contract.encode(CacheEvent(key, state, path="objects/aa/a" if state == "cached" else ""))  # type: ignore[arg-type]


def test_undecodable_records_go_to_dead_letter_and_the_follower_goes_on(kafka_settings: Settings) -> None:
    topic = kafka_settings.topic(contract.CACHE_EVENTS)
    prod = Producer({"bootstrap.servers": kafka_settings.kafka_bootstrap})
    good = "http://good.test/a"
    prod.produce(topic, key=b"http://bad.test/a", value=b"{not json")
    prod.produce(topic, key=b"http://bad.test/b", value=orjson.dumps({"v": 1, "cache_key": 123}))
    prod.produce(topic, key=b"http://other.test/a", value=event(good, "cached"))  # key is not its cache_key
    prod.produce(topic, key=good.encode(), value=event(good, "cached"))
    prod.flush(10)
    index = CacheIndex()
    with following(kafka_settings, index, dead=prod) as follower:
        assert index.is_steered("good.test") and not index.is_steered("bad.test")
        assert follower.errors == 3 and follower.is_alive()
        prod.produce(topic, key=good.encode(), value=event(good, "evicted"))  # still following
        prod.flush(10)
        wait_applied(follower, 2)
        assert not index.is_steered("good.test")
    letters = [orjson.loads(m.value()) for m in read_topic(kafka_settings.kafka_bootstrap,
                                                            kafka_settings.topic(contract.DEAD_LETTER))]
    assert len(letters) == 3 and all(d["topic"] == topic and d["reason"] for d in letters)
    assert any("cache_key" in d["reason"] for d in letters)


@pytest.mark.parametrize("fastlane", [True, False], ids=["compiled-lane", "python-lane"])
def test_no_answer_steers_a_host_the_index_no_longer_has(kafka_settings: Settings, dnsmasq: Dnsmasq,
                                                         fastlane: bool) -> None:
    """Many events applied by the follower while queries run: once an eviction is applied, the
    very next answer is not steered (a stale memo would answer the node until the next event)."""
    settings = kafka_settings.model_copy(update={"dns_port": 0, "node_address": "192.0.2.10",
                                                 "upstream_dns": (dnsmasq.upstream,), "dns_fastlane": fastlane,
                                                 "dns_rate_qps": 0.0})
    index = CacheIndex()
    server = DnsServer(settings, index, health_check=False)
    topic = settings.topic(contract.CACHE_EVENTS)
    prod = Producer({"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 0})
    key = "http://racy.lab.test/a"
    query = dns.message.make_query("racy.lab.test", dns.rdatatype.A).to_wire()
    stop = threading.Event()

    def hammer() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.5)
            while not stop.is_set():
                s.sendto(query, ("127.0.0.1", server.port))
                try:
                    s.recv(4096)
                except TimeoutError:
                    pass

    def steered() -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.sendto(query, ("127.0.0.1", server.port))
            reply = dns.message.from_wire(s.recv(4096))
        return any(r.to_text() == "192.0.2.10" for rrset in reply.answer for r in rrset)

    with following(settings, index, server) as follower:
        threads = [threading.Thread(target=hammer, daemon=True) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            for i in range(60):
                prod.produce(topic, key=key.encode(), value=event(key, "cached"))
                prod.flush(10)
                wait_applied(follower, 2 * i + 1)
                assert steered(), f"round {i}: cached but not steered"
                prod.produce(topic, key=key.encode(), value=event(key, "evicted"))
                prod.flush(10)
                wait_applied(follower, 2 * i + 2)
                assert not steered(), f"round {i}: evicted but still steered"
        finally:
            stop.set()
            for t in threads:
                t.join(5)
    assert server.counters["steered"] > 60


def test_follower_stops_quietly_when_its_loop_is_gone(kafka_settings: Settings, tmp_path: Path) -> None:
    loop = asyncio.new_event_loop()
    loop.close()
    follower = CacheEventsFollower(kafka_settings.kafka_bootstrap, kafka_settings.topic(contract.CACHE_EVENTS),
                                   CacheIndex(), loop)
    follower.start()
    follower.join(20)
    assert not follower.is_alive()
