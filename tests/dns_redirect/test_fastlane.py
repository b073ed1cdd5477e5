"""Tests of the compiled UDP lane (dns_redirect/_fastlane.c) behind the DNS server: real UDP
sockets and dnspython against a running server, answers compared byte for byte with the pure
Python path (the reference), and the rules the lane must keep (ACL, rate limit, 0x20 case, EDNS,
index changes and edge health). The extension is imported unconditionally: a failed build fails."""

from __future__ import annotations

import asyncio
import ipaddress
import random
import select
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rrset
import pytest
from aiohttp import web
from dnslib import DNSRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from dns_redirect import _fastlane
from dns_redirect.index import CacheIndex
from dns_redirect.policy import ClientAcl, ResponseCache, lane_networks
from dns_redirect.server import DnsServer, fastlane_available
from heatcache.contract import CacheEvent
from heatcache.services.dnsmasq import Dnsmasq
from heatcache.settings import Settings, SettingsError, load_settings
from tests.dns_redirect.corpus import malformed_queries
from tests.loopthread import on_loop_thread


class Running:
    """A DnsServer started on its own event loop in a thread, as `heatcache dns` runs it."""

    def __init__(self, server: DnsServer, loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self.loop = loop

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the server's loop thread (where the server's state lives) and return its result."""
        async def go() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(go(), self.loop).result(5)


@contextmanager
def running(server: DnsServer, *extra: Callable[[], Any]) -> Iterator[Running]:
    async def start() -> None:
        for setup in extra:
            await setup()
        await server.start()

    with on_loop_thread(start, server.stop) as loop:
        yield Running(server, loop)


def steering_index(*hosts: str) -> CacheIndex:
    index = CacheIndex()
    for host in hosts:
        index.apply(CacheEvent(f"http://{host}/a", "cached", path="objects/aa/a"))
    return index


def settings_for(tmp_path: Path, upstream: str, **kw: Any) -> Settings:
    base: dict[str, Any] = dict(state_dir=tmp_path, dns_port=0, node_address="192.0.2.10",
                                node_address6="2001:db8::10", upstream_dns=(upstream,), dns_ttl=7)
    return load_settings(**{**base, **kw})


def exchange(port: int, raw: bytes, source: str = "127.0.0.1", host: str = "127.0.0.1",
             timeout: float = 5.0) -> bytes | None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.settimeout(timeout)
        s.sendto(raw, (host, port))
        try:
            return s.recv(65535)
        except TimeoutError:
            return None


def addresses(msg: dns.message.Message) -> list[str]:
    return [r.to_text() for rrset in msg.answer for r in rrset]


def with_id(raw: bytes, qid: int) -> bytes:
    return qid.to_bytes(2, "big") + raw[2:]


def test_the_extension_is_built_and_the_server_uses_it(tmp_path: Path) -> None:
    assert fastlane_available() and _fastlane.MAX_BATCH == 64
    server = DnsServer(settings_for(tmp_path, "127.0.0.1:9"), steering_index("cdn.lab.test"), health_check=False)
    with running(server) as r:
        assert isinstance(r.server.lane, _fastlane.Lane)
        reply = dns.query.udp(dns.message.make_query("cdn.lab.test", "A"), "127.0.0.1", port=server.port, timeout=5)
        assert addresses(reply) == ["192.0.2.10"]


def test_python_lane_is_selectable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HEATCACHE_DNS_FASTLANE", raising=False)
    assert load_settings().dns_fastlane is True
    monkeypatch.setenv("HEATCACHE_DNS_FASTLANE", "false")
    assert load_settings().dns_fastlane is False
    server = DnsServer(settings_for(tmp_path, "127.0.0.1:9", dns_fastlane=False), steering_index("cdn.lab.test"),
                       health_check=False)
    with running(server):
        assert server.lane is None
        reply = dns.query.udp(dns.message.make_query("cdn.lab.test", "A"), "127.0.0.1", port=server.port, timeout=5)
        assert addresses(reply) == ["192.0.2.10"]
    with pytest.raises(SettingsError, match="HEATCACHE_DNS_FASTLANE"):
        load_settings(dns_fastlane="sometimes")


def _query(name: str, rdtype: str, rd: bool = True, **kw: Any) -> bytes:
    q = dns.message.make_query(name, rdtype, **kw)
    if not rd:
        q.flags &= ~dns.flags.RD
    return q.to_wire()


QUERIES = {
    "A": _query("cdn.lab.test", "A"),
    "AAAA": _query("cdn.lab.test", "AAAA"),
    "no-RD": _query("cdn.lab.test", "A", rd=False),
    "EDNS": _query("cdn.lab.test", "A", use_edns=0, payload=1232),
    "EDNS+DO": _query("cdn.lab.test", "AAAA", want_dnssec=True),
    "0x20": _query("cDn.LAB.tEst", "A"),
    "forwarded": _query("origin.lab.test", "A"),
    "forwarded 0x20 EDNS": _query("OrIgIn.lab.TEST", "A", use_edns=0),
}


@pytest.mark.parametrize("name", list(QUERIES))
def test_lane_answers_equal_the_python_path(tmp_path: Path, dnsmasq: Dnsmasq, name: str) -> None:
    raw = QUERIES[name]
    server = DnsServer(settings_for(tmp_path, dnsmasq.upstream), steering_index("cdn.lab.test"), health_check=False)
    # the reference: the pure-Python path over the same index and the same response cache (so
    # that forwarded answers have the same age), called on the server's loop thread
    reference = DnsServer(settings_for(tmp_path, dnsmasq.upstream, dns_fastlane=False), server.index,
                          health_check=False)
    reference.cache = server.cache
    with running(server) as r:
        first = exchange(server.port, with_id(raw, 1))  # the Python path answers (and forwards)
        assert first is not None
        if name.startswith("forwarded"):  # the next one comes from the cache and teaches the lane
            assert exchange(server.port, with_id(raw, 1)) is not None
        # the same question in the other case learns nothing new: the lane answers it too
        for qid, variant in ((2, raw), (3, raw[:12] + raw[12:].swapcase() if name == "0x20" else raw)):
            before = r.call(lambda v=variant, q=qid: reference.fast(with_id(v, q), "127.0.0.1"))
            lane_before = server.counters["lane"]
            got = exchange(server.port, with_id(variant, qid))
            after = r.call(lambda v=variant, q=qid: reference.fast(with_id(v, q), "127.0.0.1"))
            assert server.counters["lane"] == lane_before + 1, "answered by the compiled lane"
            assert got in (before, after)  # forwarded TTLs count down: equal to one rendering of that second
            msg = dns.message.from_wire(got)
            assert msg.id == qid and msg.question[0].name.to_text() == dns.message.from_wire(variant).question[0]\
                .name.to_text()  # the client's own case (0x20)


def test_non_campus_sources_are_refused_and_never_answered_by_the_lane(tmp_path: Path, dnsmasq: Dnsmasq) -> None:
    server = DnsServer(settings_for(tmp_path, dnsmasq.upstream, dns_client_networks=("10.0.0.0/8", "::1/128")),
                       steering_index("cdn.lab.test"), health_check=False)
    raw = _query("cdn.lab.test", "A")
    with running(server):
        for qid in range(3):
            reply = exchange(server.port, with_id(raw, qid))
            assert reply is not None and dns.message.from_wire(reply).rcode() == dns.rcode.REFUSED
        assert server.counters["refused"] == 3 and server.counters["lane"] == 0 and server.counters["steered"] == 0


@pytest.mark.parametrize(("networks", "allowed"), [(("::1/128",), True), (("127.0.0.0/8", "::/0"), True),
                                                   (("127.0.0.0/8",), False)])
def test_acl_over_ipv6(tmp_path: Path, networks: tuple[str, ...], allowed: bool) -> None:
    server = DnsServer(settings_for(tmp_path, "127.0.0.1:9", dns_host="::1", dns_client_networks=networks),
                       steering_index("cdn.lab.test"), health_check=False)
    raw = _query("cdn.lab.test", "A")
    with running(server):
        replies = [exchange(server.port, with_id(raw, qid), source="::1", host="::1") for qid in range(3)]
    rcodes = {dns.message.from_wire(r).rcode() for r in replies if r is not None}
    assert len(replies) == 3 and rcodes == {dns.rcode.NOERROR if allowed else dns.rcode.REFUSED}
    assert server.counters["lane"] == (2 if allowed else 0)


def test_lane_networks_follow_client_acl() -> None:
    """The lane's form of the ACL decides like ClientAcl (checked here in Python, prefix by prefix)."""
    networks = ("127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "fc00::/7", "::1/128", "::/0")
    rng = random.Random(7)
    for nets in (networks[:3], networks[3:5], networks):
        acl = ClientAcl(nets)
        lane = lane_networks(acl)
        samples = ["127.0.0.1", "10.255.1.1", "172.31.0.1", "172.32.0.1", "8.8.8.8", "::1", "fd00::5", "2001:db8::1",
                   "::ffff:10.1.1.1", "::ffff:8.8.8.8"] + [str(ipaddress.ip_address(rng.getrandbits(32)))
                                                          for _ in range(200)]
        for address in samples:
            ip = ipaddress.ip_address(address)
            v4 = isinstance(ip, ipaddress.IPv4Address) or ip.ipv4_mapped is not None
            packed = (b"\0" * 10 + b"\xff\xff" + ip.packed) if isinstance(ip, ipaddress.IPv4Address) else ip.packed
            as_int = int.from_bytes(packed, "big")
            lane_says = any(is_v4 == v4 and as_int >> (128 - p) == int.from_bytes(net, "big") >> (128 - p)
                            if p else is_v4 == v4 for is_v4, net, p in lane)
            assert lane_says == acl.allowed(address), address


def test_a_flooding_client_is_dropped_by_the_lane(tmp_path: Path, dnsmasq: Dnsmasq) -> None:
    server = DnsServer(settings_for(tmp_path, dnsmasq.upstream, dns_rate_qps=1, dns_rate_burst=3),
                       steering_index("cdn.lab.test"), health_check=False)
    raw = _query("cdn.lab.test", "A")
    with running(server), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        for qid in range(10):
            s.sendto(with_id(raw, qid), ("127.0.0.1", server.port))
        s.settimeout(1.0)
        answered = []
        with pytest.raises(TimeoutError):
            while True:
                answered.append(dns.message.from_wire(s.recv(512)).id)
        # the lane's answers leave before Python's (the first query's): order aside, the first three
        assert sorted(answered) == [0, 1, 2] and server.counters["rate-limited"] == 7
        assert exchange(server.port, raw, source="127.0.0.9") is not None  # another client has its own bucket


def test_index_changes_reach_the_lane_at_once(tmp_path: Path, dnsmasq: Dnsmasq) -> None:
    index = steering_index("cdn.lab.test")
    server = DnsServer(settings_for(tmp_path, dnsmasq.upstream), index, health_check=False)
    fwd, steered = _query("origin.lab.test", "A"), _query("cdn.lab.test", "A")

    def answer(raw: bytes) -> list[str]:
        reply = exchange(server.port, raw)
        assert reply is not None
        return addresses(dns.message.from_wire(reply))

    with running(server) as r:
        for _ in range(3):  # forwarded, then served from the cache by Python, then by the lane
            assert answer(fwd) == ["127.0.0.2"] and answer(steered) == ["192.0.2.10"]
        assert r.call(lambda: server.counters["lane"]) >= 3  # read on the loop: counted right after sending
        # a cached upstream answer never hides new steering, nor a learned steered answer an eviction
        r.call(lambda: index.apply(CacheEvent("http://origin.lab.test/video.bin", "cached", path="objects/aa/v")))
        r.call(lambda: index.apply(CacheEvent("http://cdn.lab.test/a", "evicted")))
        assert answer(fwd) == ["192.0.2.10"]
        assert answer(steered) == []  # dnsmasq does not know cdn.lab.test: not steered any more
        # the index changes on the loop (its one writer, fed by the cache-events follower)
        r.call(lambda: index.apply(CacheEvent("http://cdn.lab.test/a", "cached", path="objects/aa/a")))
        assert answer(steered) == ["192.0.2.10"]


def test_edge_down_stops_steering_within_one_ttl(tmp_path: Path) -> None:
    healthy = {"ok": True}

    async def health(_: web.Request) -> web.Response:
        return web.Response(status=200 if healthy["ok"] else 503)

    app = web.Application()
    app.router.add_get("/.heatcache/health", health)
    runner = web.AppRunner(app)
    edge_sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    edge_sock.bind(("127.0.0.1", 0))

    async def start_edge() -> None:
        await runner.setup()
        await web.SockSite(runner, edge_sock).start()

    # the upstream is a closed port: a query that is not steered gets SERVFAIL, never the node
    health_url = f"http://127.0.0.1:{edge_sock.getsockname()[1]}/.heatcache/health"
    conf = settings_for(tmp_path, "127.0.0.1:9", dns_ttl=2, edge_health_url=health_url)
    server = DnsServer(conf, steering_index("cdn.lab.test"), health_check=True)
    raw = _query("cdn.lab.test", "A")

    with running(server, start_edge) as r:
        try:
            for qid in range(3):
                reply = exchange(server.port, with_id(raw, qid))
                assert reply is not None and addresses(dns.message.from_wire(reply)) == ["192.0.2.10"]
            assert server.counters["lane"] >= 1
            healthy["ok"] = False
            t0 = time.monotonic()
            while time.monotonic() - t0 < conf.dns_ttl:
                reply = exchange(server.port, raw)
                assert reply is not None
                if addresses(dns.message.from_wire(reply)) == []:
                    break
                time.sleep(0.05)
            else:
                pytest.fail("still steered one TTL after the edge went down")
            assert dns.message.from_wire(reply).rcode() == dns.rcode.SERVFAIL
        finally:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), r.loop).result(5)


def test_rendered_until_is_the_next_second_of_age_or_expiry() -> None:
    cache = ResponseCache()
    q = dns.message.make_query("origin.lab.test", "A")
    response = dns.message.make_response(q)
    response.answer.append(dns.rrset.from_text("origin.lab.test.", 5, "IN", "A", "127.0.0.2"))
    request = DNSRecord.parse(q.to_wire())
    cache.put(request, DNSRecord.parse(response.to_wire()), 100.0)
    key = ResponseCache.key(request)
    assert key is not None
    assert cache.rendered_until(key, 100.0) == 101.0 and cache.rendered_until(key, 102.5) == 103.0
    assert cache.rendered_until(key, 104.9) == 105.0  # the last second before expiry
    assert cache.rendered_until(("other", 1, 1, False), 50.0) == 50.0  # unknown: already stale


def test_100k_malformed_packets_through_the_lane(tmp_path: Path) -> None:
    """The server's 100k fuzz, as datagrams through the compiled lane: every packet is accounted
    for, whatever is answered parses, and the server still steers afterwards."""
    conf = load_settings(state_dir=tmp_path, dns_port=0, upstream_dns=("127.0.0.1:9",), dns_rate_qps=0,
                         node_address="192.0.2.10")
    server = DnsServer(conf, steering_index("cdn.lab.test"), health_check=False)
    packets = malformed_queries(100_000, id_share=0.33)  # a third of mutations touch only the id

    def processed() -> int:
        c = server.counters
        return c["malformed"] + c["steered"] + c["forwarded"] + c["cache-hit"] + c["refused"]

    answered = 0
    with running(server), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        s.setblocking(False)
        for start in range(0, len(packets), 500):
            for raw in packets[start:start + 500]:
                s.sendto(raw, ("127.0.0.1", server.port))
            deadline = time.monotonic() + 30
            while processed() < start + 500 and time.monotonic() < deadline:
                time.sleep(0.005)
            while True:
                try:
                    DNSRecord.parse(s.recv(65535))  # whatever we answer is well-formed
                except BlockingIOError:
                    break
                answered += 1
        assert processed() == 100_000
        c = server.counters
        assert c["malformed"] > 50_000 and c["lane"] > 3_000 and answered >= c["steered"]
        assert addresses(dns.query.udp(dns.message.make_query("cdn.lab.test", "A"), "127.0.0.1",
                                       port=server.port, timeout=5)) == ["192.0.2.10"]


def test_tcp_and_udp_queries_share_the_clients_bucket(tmp_path: Path, dnsmasq: Dnsmasq) -> None:
    server = DnsServer(settings_for(tmp_path, dnsmasq.upstream, dns_rate_qps=0.01, dns_rate_burst=3),
                       steering_index("cdn.lab.test"), health_check=False)
    q = dns.message.make_query("cdn.lab.test", "A")
    with running(server):
        for _ in range(2):
            assert addresses(dns.query.udp(q, "127.0.0.1", port=server.port, timeout=5)) == ["192.0.2.10"]
        assert addresses(dns.query.tcp(q, "127.0.0.1", port=server.port, timeout=5)) == ["192.0.2.10"]
        with pytest.raises((EOFError, ConnectionError)):  # the bucket is empty: the server hangs up
            dns.query.tcp(q, "127.0.0.1", port=server.port, timeout=5)
        assert exchange(server.port, q.to_wire(), timeout=0.5) is None
        assert server.counters["rate-limited"] == 2


# -- the extension alone, on a real UDP socket (no event loop)

@contextmanager
def bare_lane(rate: float = 0.0, networks: tuple[str, ...] = ("127.0.0.0/8",)) -> Iterator[
        tuple[_fastlane.Lane, socket.socket, socket.socket]]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as srv, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as cli:
        srv.bind(("127.0.0.1", 0))
        srv.setblocking(False)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        cli.bind(("127.0.0.1", 0))
        cli.connect(srv.getsockname())
        cli.settimeout(2)
        yield _fastlane.Lane(srv.fileno(), lane_networks(ClientAcl(networks)), rate, 3.0), srv, cli


def drain(lane: _fastlane.Lane, srv: socket.socket, expected: int = 1) -> list[tuple[bytes, Any]]:
    """What the lane hands to Python once ``expected`` datagrams were handled (answered or not)."""
    out: list[tuple[bytes, Any]] = []
    handled = 0
    deadline = time.monotonic() + 5
    while handled < expected and time.monotonic() < deadline:
        if select.select([srv], [], [], 0.1)[0]:
            got = lane.drain()
            steered, hits, limited, _ = lane.take_counters()
            handled += len(got) + steered + hits + limited
            out += got
    return out


def steered_answer_for(raw: bytes) -> bytes:
    """The Python path's answer to ``raw`` when cdn.lab.test is steered."""
    server = DnsServer(load_settings(upstream_dns=("127.0.0.1:9",), node_address="192.0.2.10"),
                       steering_index("cdn.lab.test"), health_check=False)
    reply = server.fast(raw, "127.0.0.1")
    assert isinstance(reply, bytes)
    return reply


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=700), min_size=1, max_size=150))
def test_unknown_datagrams_come_back_unchanged(datagrams: list[bytes]) -> None:
    steered = _query("cdn.lab.test", "A")
    with bare_lane() as (lane, srv, cli):
        assert lane.learn(steered, steered_answer_for(steered), float("inf"), _fastlane.KIND_STEERED)
        datagrams = [d for d in datagrams if d[2:].lower() != steered[2:]]
        for d in datagrams:
            cli.send(d)
        back = drain(lane, srv, len(datagrams))
        assert [d for d, _ in back] == datagrams and {a for _, a in back} == {cli.getsockname()}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.binary(max_size=200))
def test_learn_takes_only_answers_that_carry_the_question(query: bytes, answer: bytes) -> None:
    with bare_lane() as (lane, srv, cli):
        if not lane.learn(query, answer, float("inf"), _fastlane.KIND_STEERED):
            return
        cli.send(query)
        assert drain(lane, srv) == []
        got = cli.recv(65535)
        # the learned answer around the client's id, with the client's own question bytes
        assert len(got) == len(answer) and got[:2] == query[:2] and got[2:12] == answer[2:12]
        assert got[12:].lower() == answer[12:].lower()


def test_learn_refuses_a_question_of_another_type() -> None:
    raw = _query("cdn.lab.test", "A")
    answer = bytearray(steered_answer_for(raw))
    end = len(raw)
    answer[end - 3] = ord("a")  # qtype 0x0061 is not 0x0001 (nor 0x0041): only the name may differ in case
    with bare_lane() as (lane, _, _):
        assert not lane.learn(raw, bytes(answer), float("inf"), _fastlane.KIND_STEERED)
        q = bytearray(raw)
        q[end - 3] = ord("A")
        assert not lane.learn(bytes(q), bytes(answer), float("inf"), _fastlane.KIND_STEERED)
        assert lane.learn(raw, steered_answer_for(raw), float("inf"), _fastlane.KIND_STEERED)


labels = st.lists(st.binary(min_size=1, max_size=63), min_size=1, max_size=4)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=12, max_size=12), labels, st.binary(min_size=4, max_size=4), st.binary(max_size=40),
       st.binary(min_size=12, max_size=12), st.binary(max_size=100), st.randoms(use_true_random=False))
def test_any_learned_question_is_answered_with_the_clients_bytes(
        header: bytes, name: list[bytes], type_class: bytes, trailer: bytes, answer_header: bytes, rest: bytes,
        rng: random.Random) -> None:
    question = b"".join(bytes([len(label)]) + label for label in name) + b"\0" + type_class
    query = header + question + trailer
    learned_question = bytes(c ^ 0x20 if 65 <= c ^ 0x20 <= 90 and rng.random() < 0.5 else c
                             for c in question[:-4]) + type_class  # another case of the same name
    answer = answer_header + learned_question + rest
    with bare_lane() as (lane, srv, cli):
        assert lane.learn(query, answer, float("inf"), _fastlane.KIND_CACHE_HIT)
        cli.send(with_id(query, 0x1234))
        assert drain(lane, srv) == []
        assert cli.recv(65535) == b"\x12\x34" + answer_header[2:] + question + rest


def test_learned_answers_splice_id_and_case_and_expire() -> None:
    raw = _query("cdn.lab.test", "A")
    answer = steered_answer_for(raw)
    with bare_lane() as (lane, srv, cli):
        assert lane.learn(raw, answer, float("inf"), _fastlane.KIND_STEERED) and len(lane) == 1
        mixed = with_id(_query("CDN.lab.TeSt", "A"), 0xBEEF)
        cli.send(mixed)
        assert drain(lane, srv) == []
        got = cli.recv(512)
        end = len(mixed)
        assert got == mixed[:2] + answer[2:12] + mixed[12:end] + answer[end:]
        assert got == steered_answer_for(mixed)  # what the Python path says for the same bytes
        # a forwarded answer past its deadline goes back to Python
        assert lane.learn(raw, answer, time.monotonic() - 1, _fastlane.KIND_CACHE_HIT)
        cli.send(raw)
        assert [d for d, _ in drain(lane, srv)] == [raw]
        lane.clear()
        assert len(lane) == 0


def test_bucket_and_acl_of_the_bare_lane() -> None:
    raw = _query("cdn.lab.test", "A")
    with bare_lane(rate=0.001) as (lane, srv, cli):
        for qid in range(5):
            cli.send(with_id(raw, qid))
        assert [d[:2] for d, _ in drain(lane, srv, 5)] == [b"\0\0", b"\0\1", b"\0\2"]  # a burst of 3
        assert lane.allow("::ffff:127.0.0.1") is False  # the same client in its v4-mapped spelling
        assert lane.allow("127.0.0.2") is True and lane.allow("fe80::1%eth0") is True
        with pytest.raises(ValueError):
            lane.allow("not-an-address")
    with bare_lane(networks=("10.0.0.0/8",)) as (lane, srv, cli):
        lane.learn(raw, steered_answer_for(raw), float("inf"), _fastlane.KIND_STEERED)
        cli.send(raw)
        assert [d for d, _ in drain(lane, srv)] == [raw]  # not campus: Python answers REFUSED
