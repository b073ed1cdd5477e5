"""The DNS server's I/O shell: asyncio UDP and TCP listeners; steered names answered from the
cache index while the edge is healthy, everything else forwarded to the upstream resolver (with a
TTL-honouring response cache). Only campus networks may ask; each client is rate limited.

UDP goes through the compiled lane (dns_redirect/_fastlane.c) when it is built and enabled: it
answers, in batches, the questions this module already answered once (taught with
``Lane.learn``) and hands everything else to the same Python path, which stays the reference."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import struct
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import aiohttp
from dnslib import RCODE, DNSRecord

from dns_redirect.answer import error_reply, steered_reply
from dns_redirect.index import CacheIndex
from dns_redirect.policy import ClientAcl, RateLimiter, ResponseCache, lane_networks, never_steer
from dns_redirect.ports import ports_served
from dns_redirect.wire import (
    CLASS_IN,
    QTYPE_A,
    QTYPE_AAAA,
    Question,
    pack_address,
    parse_question,
    steered_answer,
    truncated,
)
from heatcache.netutil import free_port_udp_tcp
from heatcache.settings import Settings, parse_hostport

if TYPE_CHECKING:
    from dns_redirect._fastlane import Lane

log = logging.getLogger(__name__)
FULL = object()  # the fast path's "take the general path" answer
STEERED, CACHE_HIT = 0, 1  # the lane's kinds of learned answer (KIND_* in _fastlane.c)


def fastlane_available() -> bool:
    """True when the compiled lane was built for this interpreter."""
    try:
        import dns_redirect._fastlane  # noqa: F401
    except ImportError:
        return False
    return True


def system_upstreams(resolv_conf: Path = Path("/etc/resolv.conf")) -> tuple[str, ...]:
    out = []
    try:
        for line in resolv_conf.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                out.append(parts[1])
    except OSError:
        pass
    return tuple(out)


class _UpstreamProtocol(asyncio.DatagramProtocol):
    def __init__(self, future: asyncio.Future[bytes]) -> None:
        self.future = future

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not self.future.done():
            self.future.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


class DnsServer:
    """Answers steered names itself and forwards the rest; counters say which was which."""

    def __init__(self, settings: Settings, index: CacheIndex, health_check: bool = True) -> None:
        self.settings = settings
        self.index = index
        upstreams = settings.upstream_dns or system_upstreams()
        self.upstreams = [parse_hostport(u, 53) for u in upstreams]
        self.acl = ClientAcl(settings.dns_client_networks)
        self.limiter = RateLimiter(settings.dns_rate_qps, settings.dns_rate_burst)
        self.cache = ResponseCache(max_entries=settings.dns_cache_entries) if settings.dns_cache_entries else None
        self.counters: Counter[str] = Counter()
        # Until the first health check answers, assume the edge is down: never strand clients.
        self.edge_healthy = not health_check
        self.health_check = health_check
        # (HTTP client ports, TLS ports) the edge reported serving in its health JSON; None = no
        # report (no health check, or an edge that does not say): no per-port check
        self.edge_ports: tuple[frozenset[int], frozenset[int]] | None = None
        # the operator's kill switch (`control` topic: steering stopped): answer every name normally
        self.steering_stopped = not settings.dns_steering
        # a trial on some client networks only: everyone else resolves steered names normally
        self.steer_acl = ClientAcl(settings.dns_steer_networks) if settings.dns_steer_networks else None
        self._transports: list[asyncio.BaseTransport] = []
        self._tcp: asyncio.Server | None = None
        self._health_task: asyncio.Task[None] | None = None
        self.port = settings.dns_port
        self._memo: dict[bytes, bytes] = {}
        self._questions: dict[bytes, tuple[tuple[str, int, int, bool], Question]] = {}
        self._memo_gen: tuple[int, bool, bool, object] = (-1, False, False, None)
        self._v4 = pack_address(settings.node_address)
        self._v6 = pack_address(settings.node_address6)
        self.lane: Lane | None = None  # the compiled UDP lane, once start() made one
        self._lane_gen: tuple[int, bool, bool, object] = (-1, False, False, None)
        self._udp_sock: socket.socket | None = None
        self._udp_tasks: set[asyncio.Task[None]] = set()

    def fast(self, raw: bytes, client: str, checked: bool = False) -> bytes | object | None:
        """The synchronous hot path for UDP: steered answers and cache hits without dnslib and
        without a task. Returns the reply, None (drop), or FULL for the general path.
        ``checked``: the compiled lane already applied the rate limit. Every answer given here
        is taught to the lane, which gives it again to the same question without Python."""
        if not self.acl.allowed(client):
            return FULL
        if not checked and not self._allow(client):
            self.counters["rate-limited"] += 1
            return None
        # Steered answers differ from the query only after its id: memoize them by the query's
        # bytes, valid for one version of the index and one health state.
        gen = (self.index.version, self.edge_healthy, self.steering_stopped, self.edge_ports)
        if gen != self._memo_gen:
            # both memos hold decisions of one generation: "steered" and "not steered, cached"
            self._memo.clear()
            self._questions.clear()
            self._memo_gen = gen
        body = raw[2:]
        lane = self.lane
        limited = self.steer_acl is not None  # the lane cannot tell clients apart: it learns no steered name
        tail = self._memo.get(body)
        if tail is not None:
            if limited and not self._steers(client):
                return FULL  # steered for others: this client is answered normally
            self.counters["steered"] += 1
            if lane is not None and not limited:  # e.g. the lane's table overflowed and was cleared
                lane.learn(raw, raw[:2] + tail, _FOREVER, STEERED)
            return raw[:2] + tail
        cache = self.cache
        known = self._questions.get(body)  # a query seen before: skip parsing it again
        if known is not None and cache is not None:
            now = time.monotonic()
            reply = cache.get_wire(known[0], raw, known[1].end, now)
            if reply is not None:
                return self._cached_udp(raw, reply, known[0], known[1], now)
        q = parse_question(raw)
        if q is None:
            return FULL
        if q.qclass == CLASS_IN and q.qtype in (QTYPE_A, QTYPE_AAAA) and self.is_steered(q.name):
            if limited and not self._steers(client):
                return FULL
            self.counters["steered"] += 1
            answer = steered_answer(raw, q, self._v4, self._v6, self.settings.dns_ttl)
            if len(self._memo) < 50_000:
                self._memo[body] = answer[2:]
            if lane is not None and not limited:
                lane.learn(raw, answer, _FOREVER, STEERED)
            return answer
        if cache is not None:
            key = (q.name, q.qtype, q.qclass, q.edns)
            now = time.monotonic()
            reply = cache.get_wire(key, raw, q.end, now)
            if reply is not None:
                if len(self._questions) >= 50_000:
                    self._questions.clear()
                self._questions[body] = (key, q)
                return self._cached_udp(raw, reply, key, q, now)
        return FULL

    def _cached_udp(self, raw: bytes, reply: bytes, key: tuple[str, int, int, bool], q: Question,
                    now: float) -> bytes:
        """A cached answer as this client may take it over UDP: whole when it fits the client's
        limit (512, or its EDNS size), else truncated (TC, OPT kept: it retries over TCP). The
        lane learns exactly what was sent, so it keeps each client's limit too."""
        self.counters["cache-hit"] += 1
        if len(reply) > q.udp_limit:
            self.counters["truncated"] += 1
            reply = truncated(reply, raw, q)
        lane = self.lane
        if lane is not None and not (self.steer_acl is not None and self.is_steered(key[0])):
            assert self.cache is not None
            lane.learn(raw, reply, self.cache.rendered_until(key, now), CACHE_HIT)
        return reply

    def lane_readable(self) -> None:
        """The UDP socket is readable: the lane answers what it knows, Python the rest."""
        lane = self.lane
        assert lane is not None
        gen = (self.index.version, self.edge_healthy, self.steering_stopped, self.edge_ports)
        if gen != self._lane_gen:  # a new index version or health state: nothing learned holds
            lane.clear()
            self._lane_gen = gen
        slow = lane.drain()
        steered, hits, limited, dropped = lane.take_counters()
        if steered or hits or limited or dropped:
            c = self.counters
            c["steered"] += steered
            c["cache-hit"] += hits
            c["lane"] += steered + hits  # of those, answered without Python
            c["rate-limited"] += limited
            c["send-dropped"] += dropped
        for data, addr in slow:
            reply = self.fast(data, addr[0], checked=True)  # the lane applied the rate limit
            if reply is FULL:
                task = asyncio.get_running_loop().create_task(self._answer_udp(data, addr))
                self._udp_tasks.add(task)  # strong refs until each answer is sent
                task.add_done_callback(self._udp_tasks.discard)
            elif isinstance(reply, bytes):
                self._send_udp(reply, addr)

    async def _answer_udp(self, data: bytes, addr: tuple[str, int] | tuple[str, int, int, int]) -> None:
        reply = await self.handle(data, addr[0], checked=True)
        if reply is not None:
            if len(reply) > _udp_limit(data):
                self.counters["truncated"] += 1
                reply = _truncate(reply)
            self._send_udp(reply, addr)

    def _send_udp(self, reply: bytes, addr: tuple[str, int] | tuple[str, int, int, int]) -> None:
        sock = self._udp_sock
        if sock is None:  # stopped while the answer was being forwarded
            return
        try:
            sock.sendto(reply, addr)
        except OSError:  # a full socket buffer (or a closed socket at shutdown) drops the answer
            self.counters["send-dropped"] += 1

    def _allow(self, client: str) -> bool:
        """One token bucket per client: the lane's (shared with its UDP queries) when it runs."""
        if self.lane is not None:
            return self.lane.allow(client)
        return self.limiter.allow(client, time.monotonic())

    def _steers(self, client: str) -> bool:
        """Whether this client's steered names are steered (a trial limited to some networks)."""
        return self.steer_acl is None or self.steer_acl.allowed(client)

    def is_steered(self, name: str) -> bool:
        return (self.edge_healthy and not self.steering_stopped and self.index.is_steered(name)
                and not never_steer(name, self.settings.never_steer_hosts)
                and (self.edge_ports is None or ports_served(self.index.ports_of(name), *self.edge_ports)))

    async def handle(self, raw: bytes, client: str = "127.0.0.1", checked: bool = False) -> bytes | None:
        """The reply to one query from ``client``, or None to send nothing. ``checked``: the
        fast path already applied the rate limit."""
        if not self.acl.allowed(client):
            self.counters["refused"] += 1
            return error_reply(raw, RCODE.REFUSED)
        if not checked and not self._allow(client):
            self.counters["rate-limited"] += 1
            return None  # dropping, not answering, gives a spoofed-source flood nothing to reflect
        q = parse_question(raw)  # a plain A/AAAA question: the same bytes the UDP fast path sends
        steers = self._steers(client)
        if (q is not None and q.qclass == CLASS_IN and q.qtype in (QTYPE_A, QTYPE_AAAA) and steers
                and self.is_steered(q.name)):
            self.counters["steered"] += 1
            return steered_answer(raw, q, self._v4, self._v6, self.settings.dns_ttl)
        try:
            request = DNSRecord.parse(raw)
        except Exception:  # dnslib raises many types (DNSError, BufferError, struct.error...) on garbage
            self.counters["malformed"] += 1
            return None
        if request.header.qr:  # a response sent to us: never answer it (reflection loops)
            self.counters["malformed"] += 1
            return None
        s = self.settings
        reply = steered_reply(request, self.is_steered if steers else _never, s.node_address, s.node_address6,
                              s.dns_ttl)
        if reply is not None:
            self.counters["steered"] += 1
            return bytes(reply.pack())
        now = time.monotonic()
        if self.cache is not None:
            cached = self.cache.get(request, now)
            if cached is not None:
                self.counters["cache-hit"] += 1
                return cached
        self.counters["forwarded"] += 1
        answer = await self.forward(raw, request.header.id)
        if answer is None:
            self.counters["upstream-failed"] += 1
            return error_reply(raw)
        if self.cache is not None:
            try:
                self.cache.put(request, DNSRecord.parse(answer), now)
            except Exception:  # an upstream answer dnslib cannot parse is passed on, not cached
                self.counters["uncacheable"] += 1
        return answer

    async def forward(self, raw: bytes, qid: int) -> bytes | None:
        """Send the query upstream with a fresh random id (anti-spoofing), restore the client's id."""
        loop = asyncio.get_running_loop()
        for host, port in self.upstreams:
            out_id = random.getrandbits(16)
            packet = struct.pack("!H", out_id) + raw[2:]
            future: asyncio.Future[bytes] = loop.create_future()
            transport, _ = await loop.create_datagram_endpoint(partial(_UpstreamProtocol, future),
                                                               remote_addr=(host, port))
            try:
                transport.sendto(packet)
                data = await asyncio.wait_for(future, 2.0)
            except (TimeoutError, OSError):
                continue
            finally:
                transport.close()
            if len(data) < 4 or struct.unpack("!H", data[:2])[0] != out_id:
                continue
            if data[2] & 0x02:  # TC: the upstream's answer did not fit; ask it again over TCP
                full = await self._forward_tcp(host, port, packet)
                if full is not None and struct.unpack("!H", full[:2])[0] == out_id:
                    data = full
            return struct.pack("!H", qid) + data[2:]
        return None

    @staticmethod
    async def _forward_tcp(host: str, port: int, packet: bytes) -> bytes | None:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2.0)
        except (TimeoutError, OSError):
            return None
        try:
            writer.write(struct.pack("!H", len(packet)) + packet)
            await writer.drain()
            size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 2.0))[0]
            return await asyncio.wait_for(reader.readexactly(size), 2.0)
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            return None
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def check_health(self, session: aiohttp.ClientSession) -> bool:
        ports = self.edge_ports
        try:
            async with session.get(self.settings.health_url) as resp:
                healthy = resp.status == 200
                if healthy:
                    ports = served_ports(await resp.json(content_type=None))
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
            healthy = False
        if ports != self.edge_ports:
            log.info("edge serves HTTP ports %s, TLS ports %s", *(sorted(p) for p in ports or ((), ())))
            self.edge_ports = ports
        if healthy != self.edge_healthy:
            log.warning("edge %s: steering %s", "healthy" if healthy else "DOWN",
                        "on" if healthy else "off (answers come from upstream)")
        self.edge_healthy = healthy
        return healthy

    async def _health_loop(self, session: aiohttp.ClientSession) -> None:
        try:
            while True:
                await asyncio.sleep(self.settings.health_interval)
                await self.check_health(session)
        finally:
            await session.close()

    async def start(self, udp_sock: socket.socket | None = None, tcp_sock: socket.socket | None = None) -> None:
        """Listen on the configured address (or on sockets made elsewhere, e.g. in a namespace)."""
        loop = asyncio.get_running_loop()
        if self.health_check:
            interval = self.settings.health_interval
            session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=min(2.0, interval)))
            await self.check_health(session)
            self._health_task = asyncio.create_task(self._health_loop(session))
        host = self.settings.dns_host
        if self.port == 0 and udp_sock is None and ":" not in host:
            # Port 0 would give UDP an ephemeral port whose TCP twin any outgoing connection may
            # hold; take one free for both, below the ephemeral range.
            self.port = free_port_udp_tcp(host)
        server = self

        class Udp(asyncio.DatagramProtocol):
            tasks: ClassVar[set[asyncio.Task[None]]] = set()  # strong refs until each answer is sent

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                reply = server.fast(data, addr[0])
                if reply is FULL:
                    task = loop.create_task(self._answer(data, addr))
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
                elif reply is not None:
                    self.transport.sendto(reply, addr)  # type: ignore[attr-defined]

            async def _answer(self, data: bytes, addr: tuple[str, int]) -> None:
                reply = await server.handle(data, addr[0], checked=True)
                if reply is not None:
                    if len(reply) > _udp_limit(data):
                        server.counters["truncated"] += 1
                        reply = _truncate(reply)
                    self.transport.sendto(reply, addr)  # type: ignore[attr-defined]

        if self.settings.dns_fastlane and fastlane_available():
            from dns_redirect._fastlane import Lane

            sock = udp_sock if udp_sock is not None else _bind_udp(host, self.port)
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)  # absorb bursts
            s = self.settings
            self.lane = Lane(sock.fileno(), lane_networks(self.acl), s.dns_rate_qps, s.dns_rate_burst)
            self._udp_sock = sock
            loop.add_reader(sock.fileno(), self.lane_readable)
            self.port = sock.getsockname()[1]
        else:
            if self.settings.dns_fastlane:
                log.warning("the compiled DNS lane is not built (dns_redirect/_fastlane.c): UDP on the Python path")
            if udp_sock is not None:
                transport, _ = await loop.create_datagram_endpoint(Udp, sock=udp_sock)
            else:
                transport, _ = await loop.create_datagram_endpoint(Udp, local_addr=(host, self.port))
            sock = transport.get_extra_info("socket")
            if sock is not None:  # absorb bursts: a full buffer drops queries silently
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
            self._transports.append(transport)
            self.port = transport.get_extra_info("sockname")[1]
        if tcp_sock is not None:
            self._tcp = await asyncio.start_server(self._tcp_client, sock=tcp_sock)
        else:
            self._tcp = await asyncio.start_server(self._tcp_client, host, self.port)
        log.info("DNS on %s:%d (udp+tcp, %s UDP lane), upstream %s", host, self.port,
                 "compiled" if self.lane is not None else "Python", self.upstreams)

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = peer[0] if peer else "0.0.0.0"
        try:
            while True:
                head = await asyncio.wait_for(reader.readexactly(2), 10)
                raw = await reader.readexactly(struct.unpack("!H", head)[0])
                reply = await self.handle(raw, client)
                if reply is None:
                    break
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def stop(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        for t in self._transports:
            t.close()
        if self._udp_sock is not None:
            asyncio.get_running_loop().remove_reader(self._udp_sock.fileno())
            self._udp_sock.close()
            self._udp_sock = None
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()


def _never(_name: str) -> bool:
    return False


_FOREVER = float("inf")  # steered answers hold until the index or the edge's health changes


def _bind_udp(host: str, port: int) -> socket.socket:
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM,
                                                      flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    return sock


def served_ports(body: object) -> tuple[frozenset[int], frozenset[int]] | None:
    """The ports an edge's health JSON says it serves (``ports``, ``tls_ports``); None when it
    does not say (an edge from before the per-port check)."""
    if not isinstance(body, dict) or not isinstance(body.get("ports"), list):
        return None
    http = frozenset(p for p in body["ports"] if type(p) is int)
    tls = frozenset(p for p in body.get("tls_ports", ()) if type(p) is int) \
        if isinstance(body.get("tls_ports", ()), list) else frozenset()
    return http, tls


def _udp_limit(raw: bytes) -> int:
    """512 bytes, or the client's EDNS(0) buffer size (RFC 6891), capped at 4096."""
    try:
        for rr in DNSRecord.parse(raw).ar:
            if rr.rtype == 41:
                return max(512, min(int(rr.rclass), 4096))
    except Exception:  # dnslib raises assorted types on garbage
        pass
    return 512


def _truncate(reply: bytes) -> bytes:
    """Header and question only (and the OPT, RFC 6891 7), TC set: the client retries over TCP."""
    record = DNSRecord.parse(reply)
    record.rr, record.auth = [], []
    record.ar = [rr for rr in record.ar if rr.rtype == 41]
    record.header.tc = 1
    return bytes(record.pack())
