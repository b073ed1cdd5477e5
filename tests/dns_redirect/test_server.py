"""Integration tests for the DNS server (dns_redirect/server.py): real UDP/TCP queries from
dnspython, dnsmasq as the upstream resolver."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest
from dnslib import DNSRecord

from dns_redirect.index import CacheIndex
from dns_redirect.server import DnsServer
from heatcache.contract import CacheEvent
from heatcache.services.dnsmasq import Dnsmasq
from heatcache.settings import Settings, load_settings
from tests.conftest import StartDnsmasq
from tests.dns_redirect.corpus import malformed_queries
from tests.loopthread import on_loop_thread


@pytest.fixture(params=[True, False], ids=["compiled-lane", "python-lane"])
def dns_server(dnsmasq: Dnsmasq, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[DnsServer]:
    settings: Settings = load_settings(state_dir=tmp_path, dns_port=0, node_address="192.0.2.10",
                                       upstream_dns=(dnsmasq.upstream,), dns_ttl=7, dns_fastlane=request.param)
    index = CacheIndex()
    index.apply(CacheEvent("http://cdn.lab.test/a", "cached", path="objects/aa/a"))
    server = DnsServer(settings, index, health_check=False)
    with on_loop_thread(server.start, server.stop):
        yield server


def ask(server: DnsServer, name: str, rdtype: str = "A", tcp: bool = False) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype)
    if tcp:
        return dns.query.tcp(q, "127.0.0.1", port=server.port, timeout=5)
    return dns.query.udp(q, "127.0.0.1", port=server.port, timeout=5)


def addresses(msg: dns.message.Message) -> list[str]:
    return [r.to_text() for rrset in msg.answer for r in rrset]


def test_steered_and_forwarded(dns_server: DnsServer) -> None:
    steered = ask(dns_server, "cdn.lab.test")
    assert addresses(steered) == ["192.0.2.10"] and steered.answer[0].ttl == 7
    assert addresses(ask(dns_server, "cdn.lab.test", tcp=True)) == ["192.0.2.10"]
    assert addresses(ask(dns_server, "origin.lab.test")) == ["127.0.0.2"]  # from dnsmasq
    assert addresses(ask(dns_server, "origin.lab.test", tcp=True)) == ["127.0.0.2"]
    c = dns_server.counters
    assert c["steered"] == 2 and c["forwarded"] == 1 and c["cache-hit"] == 1  # the TCP query hit the cache


def test_upstream_nxdomain_passes_through(dns_server: DnsServer, dnsmasq: Dnsmasq) -> None:
    direct = dns.query.udp(dns.message.make_query("nope.invalid", "A"), "127.0.0.1", port=dnsmasq.port, timeout=5)
    ours = ask(dns_server, "nope.invalid")
    assert ours.rcode() == direct.rcode()


def test_dead_upstream_gives_servfail(tmp_path: Path) -> None:
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.1", 0))  # bound but never answers
    settings = load_settings(state_dir=tmp_path, dns_port=0, upstream_dns=(f"127.0.0.1:{dead.getsockname()[1]}",))
    server = DnsServer(settings, CacheIndex(), health_check=False)

    async def go() -> bytes | None:
        return await server.handle(dns.message.make_query("x.example", "A").to_wire())

    reply = asyncio.run(go())
    dead.close()
    assert reply is not None and dns.message.from_wire(reply).rcode() == dns.rcode.SERVFAIL


def test_garbage_is_dropped_and_server_survives(dns_server: DnsServer) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(300):
            s.sendto(os.urandom(int.from_bytes(os.urandom(1), "big") % 64), ("127.0.0.1", dns_server.port))
        s.sendto(b"", ("127.0.0.1", dns_server.port))
    # UDP may drop part of a burst in the kernel; wait until the server has drained what it got.
    seen = -1
    while seen != sum(dns_server.counters.values()):
        seen = sum(dns_server.counters.values())
        time.sleep(0.2)
    assert addresses(ask(dns_server, "cdn.lab.test")) == ["192.0.2.10"]
    assert dns_server.counters["malformed"] > 200


def run_handle(server: DnsServer, raws: list[bytes], client: str = "127.0.0.1") -> list[bytes | None]:
    async def go() -> list[bytes | None]:
        return [await server.handle(raw, client) for raw in raws]

    return asyncio.run(go())


@pytest.mark.parametrize("fastlane", [True, False], ids=["compiled-lane", "python-lane"])
def test_open_resolver_refused_for_non_campus_sources(tmp_path: Path, dnsmasq: Dnsmasq, fastlane: bool) -> None:
    settings = load_settings(state_dir=tmp_path, dns_port=0, upstream_dns=(dnsmasq.upstream,),
                             dns_client_networks=("10.0.0.0/8",), dns_fastlane=fastlane)
    server = DnsServer(settings, CacheIndex(), health_check=False)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(server.start())
    try:
        q = dns.message.make_query("origin.lab.test", "A")
        future = loop.run_in_executor(None, lambda: dns.query.udp(q, "127.0.0.1", port=server.port, timeout=5))
        reply = loop.run_until_complete(future)
        assert reply.rcode() == dns.rcode.REFUSED and reply.answer == []
        assert server.counters["refused"] == 1 and server.counters["forwarded"] == 0
        inside = run_handle(server, [q.to_wire()], client="10.2.3.4")[0]
        assert inside is not None and dns.message.from_wire(inside).rcode() == dns.rcode.NOERROR
    finally:
        loop.run_until_complete(server.stop())
        loop.close()


def test_forwarded_answers_are_cached(tmp_path: Path, dnsmasq: Dnsmasq) -> None:
    settings = load_settings(state_dir=tmp_path, upstream_dns=(dnsmasq.upstream,))
    server = DnsServer(settings, CacheIndex(), health_check=False)
    q = dns.message.make_query("origin.lab.test", "A")
    replies = run_handle(server, [q.to_wire(), q.to_wire(), q.to_wire()])
    assert server.counters["forwarded"] == 1 and server.counters["cache-hit"] == 2
    assert {tuple(addresses(dns.message.from_wire(r or b""))) for r in replies} == {("127.0.0.2",)}


def test_rate_limit_drops_a_flooding_client(tmp_path: Path, dnsmasq: Dnsmasq) -> None:
    settings = load_settings(state_dir=tmp_path, upstream_dns=(dnsmasq.upstream,), dns_rate_qps=1, dns_rate_burst=3)
    index = CacheIndex()
    index.apply(CacheEvent("http://cdn.lab.test/a", "cached", path="objects/aa/a"))
    server = DnsServer(settings, index, health_check=False)
    q = dns.message.make_query("cdn.lab.test", "A").to_wire()
    replies = run_handle(server, [q] * 10)
    assert sum(r is not None for r in replies) == 3 and server.counters["rate-limited"] == 7
    assert run_handle(server, [q], client="127.0.0.9")[0] is not None


def test_100k_malformed_packets(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path, upstream_dns=("127.0.0.1:9",), dns_rate_qps=0)
    index = CacheIndex()
    index.apply(CacheEvent("http://cdn.lab.test/a", "cached", path="objects/aa/a"))
    server = DnsServer(settings, index, health_check=False)
    packets = malformed_queries(100_000)

    async def go() -> int:
        answered = 0
        for raw in packets:
            reply = await server.handle(raw)
            if reply is not None:
                DNSRecord.parse(reply)  # whatever we answer is well-formed
                answered += 1
        return answered

    answered = asyncio.run(go())
    c = server.counters
    assert c["malformed"] + c["steered"] + c["forwarded"] + c["cache-hit"] == 100_000
    assert c["malformed"] > 50_000 and answered >= c["steered"]


def test_fast_path_follows_index_and_health(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path, upstream_dns=("127.0.0.1:9",), node_address="192.0.2.10",
                             never_steer_hosts=("bank.lab.test",))
    index = CacheIndex()
    index.apply(CacheEvent("http://cdn.lab.test/a", "cached", path="objects/aa/a"))
    index.apply(CacheEvent("http://bank.lab.test/a", "cached", path="objects/aa/b"))
    server = DnsServer(settings, index, health_check=False)
    from dns_redirect.server import FULL

    q = dns.message.make_query("cdn.lab.test", "A")
    for _ in range(2):  # the second answer comes from the memo
        reply = server.fast(q.to_wire(), "127.0.0.1")
        assert isinstance(reply, bytes) and addresses(dns.message.from_wire(reply)) == ["192.0.2.10"]
    q.id ^= 0x5555
    reply = server.fast(q.to_wire(), "127.0.0.1")
    assert isinstance(reply, bytes) and dns.message.from_wire(reply).id == q.id
    assert server.fast(dns.message.make_query("bank.lab.test", "A").to_wire(), "127.0.0.1") is FULL
    server.edge_healthy = False  # a failed health check: not steered any more, memo or not
    assert server.fast(q.to_wire(), "127.0.0.1") is FULL
    server.edge_healthy = True
    index.apply(CacheEvent("http://cdn.lab.test/a", "evicted"))
    assert server.fast(q.to_wire(), "127.0.0.1") is FULL
    assert server.counters["steered"] == 3


def test_fast_path_serves_cached_forwarded_answers(tmp_path: Path, dnsmasq: Dnsmasq) -> None:
    from dns_redirect.server import FULL

    settings = load_settings(state_dir=tmp_path, upstream_dns=(dnsmasq.upstream,))
    server = DnsServer(settings, CacheIndex(), health_check=False)
    q = dns.message.make_query("Origin.Lab.Test", "A")
    assert server.fast(q.to_wire(), "127.0.0.1") is FULL  # nothing cached yet: the general path
    run_handle(server, [q.to_wire()])  # forwards and caches
    for qid in (1, 2, 3):  # the first parses the question, the next ones reuse it
        q.id = qid
        reply = server.fast(q.to_wire(), "127.0.0.1")
        assert isinstance(reply, bytes)
        msg = dns.message.from_wire(reply)
        assert msg.id == qid and addresses(msg) == ["127.0.0.2"]
        assert msg.question[0].name.to_text() == "Origin.Lab.Test."  # the client's own case
    assert server.counters["cache-hit"] == 3 and server.counters["forwarded"] == 1


@pytest.mark.parametrize("fastlane", [True, False], ids=["compiled-lane", "python-lane"])
def test_large_answers_are_truncated_for_plain_udp(tmp_path: Path, fastlane: bool,
                                                  dnsmasq_factory: StartDnsmasq) -> None:
    big = dnsmasq_factory({"origin.lab.test": "127.0.0.2"},
                          txt={"big.lab.test": [f"chunk{i:02d}-" + "x" * 90 for i in range(12)]})
    settings = load_settings(state_dir=tmp_path, dns_port=0, upstream_dns=(big.upstream,), dns_fastlane=fastlane)
    server = DnsServer(settings, CacheIndex(), health_check=False)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(server.start())

    def query(**kw: object) -> dns.message.Message:
        q = dns.message.make_query("big.lab.test", "TXT", **kw)  # type: ignore[arg-type]
        fut = loop.run_in_executor(None, lambda: dns.query.udp(q, "127.0.0.1", port=server.port, timeout=5,
                                                                ignore_trailing=True))
        return loop.run_until_complete(fut)

    try:
        plain = query()
        assert plain.flags & dns.flags.TC and plain.answer == []  # retry over TCP, says the server
        edns = query(use_edns=0, payload=4096)
        assert not edns.flags & dns.flags.TC and sum(len(r.to_text()) for r in edns.answer[0]) > 1000
        fut = loop.run_in_executor(None, lambda: dns.query.tcp(dns.message.make_query("big.lab.test", "TXT"),
                                                                "127.0.0.1", port=server.port, timeout=5))
        over_tcp = loop.run_until_complete(fut)
        assert len(over_tcp.answer[0]) == 1 and not over_tcp.flags & dns.flags.TC
        assert server.counters["truncated"] == 1
        again = query()  # now a cache hit, still too big for plain UDP: never a learned answer of the lane
        assert again.flags & dns.flags.TC and server.counters["truncated"] == 2
    finally:
        loop.run_until_complete(server.stop())
        loop.run_until_complete(asyncio.sleep(0.1))
        loop.close()


def test_a_cached_upstream_answer_never_hides_new_steering(tmp_path: Path, dnsmasq: Dnsmasq) -> None:
    settings = load_settings(state_dir=tmp_path, upstream_dns=(dnsmasq.upstream,), node_address="192.0.2.10")
    index = CacheIndex()
    server = DnsServer(settings, index, health_check=False)
    q = dns.message.make_query("origin.lab.test", "A")
    run_handle(server, [q.to_wire()])  # forwarded and cached (dnsmasq's TTL is 60 s)
    for _ in range(2):  # the question is now known to the fast path
        reply = server.fast(q.to_wire(), "127.0.0.1")
        assert isinstance(reply, bytes) and addresses(dns.message.from_wire(reply)) == ["127.0.0.2"]
    index.apply(CacheEvent("http://origin.lab.test/video.bin", "cached", path="objects/aa/v"))
    reply = server.fast(q.to_wire(), "127.0.0.1")  # steered at once, not after the cached TTL
    assert isinstance(reply, bytes) and addresses(dns.message.from_wire(reply)) == ["192.0.2.10"]
