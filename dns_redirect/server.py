"""The DNS server's I/O shell: asyncio UDP and TCP listeners; steered names answered from the
cache index, everything else forwarded verbatim to the upstream resolver."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import struct
from collections import Counter
from functools import partial
from pathlib import Path
from typing import ClassVar

from dnslib import DNSRecord

from dns_redirect.answer import error_reply, steered_reply
from dns_redirect.index import CacheIndex
from heatcache.settings import Settings, parse_hostport

log = logging.getLogger(__name__)


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

    def __init__(self, settings: Settings, index: CacheIndex) -> None:
        self.settings = settings
        self.index = index
        upstreams = settings.upstream_dns or system_upstreams()
        self.upstreams = [parse_hostport(u, 53) for u in upstreams]
        self.counters: Counter[str] = Counter()
        self._transports: list[asyncio.BaseTransport] = []
        self._tcp: asyncio.Server | None = None
        self.port = settings.dns_port

    async def handle(self, raw: bytes) -> bytes | None:
        try:
            request = DNSRecord.parse(raw)
        except Exception:  # dnslib raises many types (DNSError, BufferError, struct.error...) on garbage
            self.counters["malformed"] += 1
            return None
        if request.header.qr:  # a response sent to us: never answer it (reflection loops)
            self.counters["malformed"] += 1
            return None
        s = self.settings
        reply = steered_reply(request, self.index.is_steered, s.node_address, s.node_address6, s.dns_ttl)
        if reply is not None:
            self.counters["steered"] += 1
            return bytes(reply.pack())
        self.counters["forwarded"] += 1
        answer = await self.forward(raw, request.header.id)
        if answer is None:
            self.counters["upstream-failed"] += 1
            return error_reply(raw)
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
                if len(data) >= 2 and struct.unpack("!H", data[:2])[0] == out_id:
                    return struct.pack("!H", qid) + data[2:]
            except (TimeoutError, OSError):
                continue
            finally:
                transport.close()
        return None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        host = self.settings.dns_host
        server = self

        class Udp(asyncio.DatagramProtocol):
            tasks: ClassVar[set[asyncio.Task[None]]] = set()  # strong refs until each answer is sent

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                task = loop.create_task(self._answer(data, addr))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

            async def _answer(self, data: bytes, addr: tuple[str, int]) -> None:
                reply = await server.handle(data)
                if reply is not None:
                    if len(reply) > 512 and not _has_edns(data):
                        reply = _truncate(reply)
                    self.transport.sendto(reply, addr)  # type: ignore[attr-defined]

        transport, _ = await loop.create_datagram_endpoint(Udp, local_addr=(host, self.port))
        sock = transport.get_extra_info("socket")
        if sock is not None:  # absorb bursts: a full buffer drops queries silently
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self._transports.append(transport)
        self.port = transport.get_extra_info("sockname")[1]
        self._tcp = await asyncio.start_server(self._tcp_client, host, self.port)
        log.info("DNS on %s:%d (udp+tcp), upstream %s", host, self.port, self.upstreams)

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await asyncio.wait_for(reader.readexactly(2), 10)
                raw = await reader.readexactly(struct.unpack("!H", head)[0])
                reply = await self.handle(raw)
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
        for t in self._transports:
            t.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()


def _has_edns(raw: bytes) -> bool:
    try:
        return any(rr.rtype == 41 for rr in DNSRecord.parse(raw).ar)
    except Exception:  # dnslib raises assorted types on garbage
        return False


def _truncate(reply: bytes) -> bytes:
    """Header and question only, TC set: the client retries over TCP."""
    record = DNSRecord.parse(reply)
    record.rr, record.auth, record.ar = [], [], []
    record.header.tc = 1
    return bytes(record.pack())
