"""TLS passthrough on the cache node: HTTPS to a steered host reaches its real origin.

DNS steering sends every connection to a steered name here, whatever the protocol, so the node
must carry HTTPS too or turning heatcache on breaks exactly the popular sites it steers. Like
Lancache's SNI proxy: read the ClientHello (``heatcache.tls``, the parser the sniffer uses), ask
the one router (``route.route_tls``) whether that name may pass, resolve it through the upstream
resolver (never our own DNS, which would answer with this node), refuse internal addresses
(``heatcache.safety``), connect from the node's outbound address and relay bytes both ways with
flow control. Nothing is decrypted, no certificate is involved: the client completes its
handshake with the origin's own certificate.

Refusals answer a TLS alert (unrecognized_name for names not steered here, handshake_failure
otherwise) and close, so clients fail fast instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from dns_redirect.index import CacheIndex
from dns_redirect.route import Refuse, route_tls
from heatcache.resolve import ResolveError, make_async_resolver, resolve_origin_async
from heatcache.safety import ForbiddenAddress
from heatcache.settings import Settings
from heatcache.tls import MAX_HELLO, hello_record_length, parse_sni, valid_sni

log = logging.getLogger(__name__)

HIGH_WATER = 1 << 20  # bytes queued toward one side before the other side stops being read
ALERT_UNRECOGNIZED_NAME = b"\x15\x03\x01\x00\x02\x02\x70"  # fatal unrecognized_name (112)
ALERT_HANDSHAKE_FAILURE = b"\x15\x03\x01\x00\x02\x02\x28"  # fatal handshake_failure (40)
MAX_HOSTS = 4096  # per-host figures kept for at most this many names (steered ones only)


@dataclass
class HostFigures:
    """What passed for one SNI name (the per-host metrics of the passthrough)."""

    connections: int = 0
    refused: int = 0
    bytes_up: int = 0  # client -> origin
    bytes_down: int = 0  # origin -> client


@dataclass
class TlsFigures:
    """Per-host figures, bounded; ``counters`` is the stage's Counter (the metrics scheme's)."""

    counters: Counter[str]
    hosts: dict[str, HostFigures] = field(default_factory=dict)

    def host(self, name: str) -> HostFigures | None:
        fig = self.hosts.get(name)
        if fig is None and len(self.hosts) < MAX_HOSTS:
            fig = self.hosts[name] = HostFigures()
        return fig

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {h: vars(f).copy() for h, f in sorted(self.hosts.items())}


class _Side(asyncio.Protocol):
    """One connection of a relayed pair: what it receives is written to the other side, and it
    stops reading while the other side's send buffer is over the high-water mark."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.account: Callable[[int], None] | None = None  # books relayed bytes as they pass

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
            if self.account is not None:
                self.account(len(data))

    def eof_received(self) -> bool:
        peer = self.peer
        if peer is not None and peer.transport is not None and peer.transport.can_write_eof():
            peer.transport.write_eof()  # TLS close_notify has gone through already: pass the half-close on
            return True
        return False

    def pause_writing(self) -> None:  # our send buffer is full: stop reading the other side
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.transport.is_closing():
            peer.transport.close()  # the pair lives and dies together (buffered bytes are still sent)


class _Client(_Side):
    """The client's side: collects the ClientHello, then becomes one half of the relay."""

    def __init__(self, owner: TlsPassthrough) -> None:
        super().__init__()
        self.owner = owner
        self.port = 0  # the port the client used: the origin is asked on the same one
        self.hello = b""
        self.deciding = False
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.port = int(transport.get_extra_info("sockname")[1])
        self.owner.live.add(self)
        self.timer = asyncio.get_running_loop().call_later(self.owner.settings.edge_tls_hello_timeout_s,
                                                           self._too_slow)

    def _too_slow(self) -> None:
        self.timer = None
        if self.peer is None and self.transport is not None:
            self.owner.counters["tls.refused.timeout"] += 1
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.peer is not None:
            super().data_received(data)
            return
        if self.deciding:  # paused; a last chunk may still arrive
            self.hello += data
            return
        self.hello += data
        need = hello_record_length(self.hello)
        if need is None or need > MAX_HELLO:
            self._refuse(Refuse(400, "tls-not-hello", ""), None)
            return
        if len(self.hello) < need:
            return
        sni = parse_sni(self.hello)
        name = valid_sni(sni) if sni is not None else None
        self.deciding = True
        assert self.transport is not None
        self.transport.pause_reading()
        task = asyncio.get_running_loop().create_task(self.owner.connect(self, name))
        self.owner.tasks.add(task)
        task.add_done_callback(self.owner.tasks.discard)

    def _refuse(self, refusal: Refuse, name: str | None) -> None:
        self.owner.counters["tls.refused." + refusal.reason.removeprefix("tls-")] += 1
        if name is not None:
            fig = self.owner.figures.host(name) if refusal.reason != "tls-not-steered" else None
            if fig is not None:
                fig.refused += 1
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(ALERT_UNRECOGNIZED_NAME if refusal.reason == "tls-not-steered"
                                 else ALERT_HANDSHAKE_FAILURE)
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.owner.live.discard(self)
        super().connection_lost(exc)


class TlsPassthrough:
    """Listeners on the configured TLS ports; ``start`` binds them all or fails naming the port."""

    def __init__(self, settings: Settings, index: CacheIndex, counters: Counter[str] | None = None) -> None:
        self.settings = settings
        self.index = index
        self.counters: Counter[str] = counters if counters is not None else Counter()
        self.figures = TlsFigures(self.counters)
        self.resolver = make_async_resolver(settings.upstream_dns)
        self.servers: list[asyncio.Server] = []
        self.live: set[_Client] = set()
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str, ports: tuple[int, ...]) -> list[int]:
        """Listen on host at each port (0 = a free one); the ports bound."""
        loop = asyncio.get_running_loop()
        bound = []
        try:
            for port in ports:
                server = await loop.create_server(lambda: _Client(self), host, port, reuse_address=True,
                                                  backlog=1024)
                self.servers.append(server)
                bound.append(server.sockets[0].getsockname()[1])
        except OSError as exc:
            await self.stop()
            raise OSError(exc.errno, f"TLS passthrough cannot listen on {host}:{port} "
                                     f"(HEATCACHE_EDGE_TLS_PORTS): {exc.strerror}") from exc
        log.info("TLS passthrough on %s ports %s", host, bound)
        return bound

    async def connect(self, client: _Client, name: str | None) -> None:
        """Decide, resolve, connect, then splice; every failure refuses the client."""
        s = self.settings
        decision = route_tls(name, client.port, self.index, 2 * s.dns_ttl, time.monotonic())
        if isinstance(decision, Refuse):
            client._refuse(decision, name)
            return
        host = decision.host
        fig = self.figures.host(host)
        try:
            address = await resolve_origin_async(self.resolver, host, s.allow_private_origins)
        except ForbiddenAddress:
            client._refuse(Refuse(403, "tls-internal", ""), host)
            return
        except ResolveError:
            client._refuse(Refuse(502, "tls-unresolved", ""), host)
            return
        if address in (s.node_address, s.node_address6) and client.port in s.edge_tls_ports:
            client._refuse(Refuse(508, "tls-loop", ""), host)
            return
        loop = asyncio.get_running_loop()
        origin = _Side()
        local = (s.outbound_address, 0) if s.outbound_address else None
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(lambda: origin, address, client.port, local_addr=local), 10)
        except (OSError, TimeoutError):
            client._refuse(Refuse(502, "tls-origin-failed", ""), host)
            return
        if client.transport is None or client.transport.is_closing():
            transport.close()
            return
        for t in (transport, client.transport):
            sock = t.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            t.set_write_buffer_limits(high=HIGH_WATER)
        self.counters["tls.connections"] += 1
        if fig is not None:
            fig.connections += 1
        counters = self.counters

        def up(n: int) -> None:
            counters["tls.bytes-up"] += n
            if fig is not None:
                fig.bytes_up += n

        def down(n: int) -> None:
            counters["tls.bytes-down"] += n
            if fig is not None:
                fig.bytes_down += n

        client.account, origin.account = up, down
        client.peer, origin.peer = origin, client
        transport.write(client.hello)
        up(len(client.hello))
        client.hello = b""
        client.transport.resume_reading()

    async def stop(self) -> None:
        for server in self.servers:
            server.close()
        for client in list(self.live):
            if client.transport is not None:
                client.transport.close()
        for server in self.servers:
            await server.wait_closed()
        self.servers = []
        for task in list(self.tasks):
            task.cancel()
        for task in list(self.tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
