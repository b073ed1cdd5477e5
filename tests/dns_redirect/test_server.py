"""Integration tests for the DNS server (dns_redirect/server.py): real UDP/TCP queries from
dnspython, dnsmasq as the upstream resolver."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from dns_redirect.index import CacheIndex
from dns_redirect.server import DnsServer
from heatcache.contract import CacheEvent
from heatcache.services.dnsmasq import Dnsmasq
from heatcache.settings import Settings, load_settings


@pytest.fixture
def dns_server(dnsmasq: Dnsmasq, tmp_path: Path) -> Iterator[DnsServer]:
    import threading

    settings: Settings = load_settings(state_dir=tmp_path, dns_port=0, node_address="192.0.2.10",
                                       upstream_dns=(dnsmasq.upstream,), dns_ttl=7)
    index = CacheIndex()
    index.apply(CacheEvent("http://cdn.lab.test/a", "cached", path="objects/aa/a"))
    server = DnsServer(settings, index)
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10)
    yield server
    asyncio.run_coroutine_threadsafe(server.stop(), loop).result(5)
    asyncio.run_coroutine_threadsafe(asyncio.sleep(0.2), loop).result(5)  # let closing transports finish
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


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
    assert dns_server.counters["steered"] == 2 and dns_server.counters["forwarded"] == 2


def test_upstream_nxdomain_passes_through(dns_server: DnsServer, dnsmasq: Dnsmasq) -> None:
    direct = dns.query.udp(dns.message.make_query("nope.invalid", "A"), "127.0.0.1", port=dnsmasq.port, timeout=5)
    ours = ask(dns_server, "nope.invalid")
    assert ours.rcode() == direct.rcode()


def test_dead_upstream_gives_servfail(tmp_path: Path) -> None:
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.1", 0))  # bound but never answers
    settings = load_settings(state_dir=tmp_path, dns_port=0, upstream_dns=(f"127.0.0.1:{dead.getsockname()[1]}",))
    server = DnsServer(settings, CacheIndex())

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
