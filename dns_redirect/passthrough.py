"""TLS passthrough on the cache node: HTTPS to a steered host reaches its real origin.

DNS steering sends every connection to a steered name here, whatever the protocol, so the node
must carry HTTPS too or turning heatcache on breaks exactly the popular sites it steers. Like
Lancache's SNI proxy: read the ClientHello (``heatcache.tls``, the parser the sniffer uses), ask
the one router (``route.route_tls``) whether that name may pass, resolve it through the upstream
resolver (never our own DNS, which would answer with this node), refuse internal addresses
(``heatcache.safety``), connect from the node's outbound address and relay bytes both ways with
``os.splice`` (socket -> pipe -> socket in the kernel, flow-controlled by the loop). Nothing is
decrypted, no certificate is involved: the client completes its handshake with the origin's own
certificate.

Refusals answer a TLS alert (unrecognized_name for names not steered here, handshake_failure
otherwise) and close, so clients fail fast instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from dns_redirect.index import CacheIndex
from dns_redirect.ports import bind_advice, unprivileged_port_start
from dns_redirect.route import Refuse, route_tls
from heatcache.resolve import ResolveError, make_async_resolver, resolve_origin_async
from heatcache.safety import ForbiddenAddress
from heatcache.settings import Settings
from heatcache.tls import MAX_HELLO, hello_record_length, parse_sni, valid_sni

log = logging.getLogger(__name__)

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


class _Splice:
    """One direction of a relayed pair, in the kernel: ``os.splice`` moves bytes from the source
    socket into a pipe and from the pipe into the destination socket, never through Python's
    memory. While the destination is full the source is not read (flow control); at the
    source's EOF the destination is shut for writing (TLS close_notify has passed already)."""

    CHUNK = 1 << 20

    def __init__(self, loop: asyncio.AbstractEventLoop, src: socket.socket, dst: socket.socket,
                 account: Callable[[int], None], done: Callable[[bool], None]) -> None:
        self.loop = loop
        self.src, self.dst = src.fileno(), dst.fileno()
        self.dst_sock = dst
        self.account = account
        self.done = done  # called once: True at a clean EOF, False on an error
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):  # a bigger pipe: fewer wake-ups per MiB
            fcntl.fcntl(self.w, fcntl.F_SETPIPE_SZ, self.CHUNK)
        self.pending = 0
        self.finished = False

    def start(self) -> None:
        self.loop.add_reader(self.src, self._readable)

    def _readable(self) -> None:
        for _ in range(16):  # what arrived meanwhile goes too, without waiting for the next wake-up
            try:
                n = os.splice(self.src, self.w, self.CHUNK, flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)
            except BlockingIOError:
                return
            except OSError:
                self._finish(False)
                return
            if n == 0:
                self.loop.remove_reader(self.src)
                with contextlib.suppress(OSError):
                    self.dst_sock.shutdown(socket.SHUT_WR)
                self._finish(True)
                return
            self.pending += n
            self._flush()
            if self.pending or self.finished:  # the destination is full (now watched) or gone
                return

    def _flush(self) -> None:
        while self.pending:
            try:
                m = os.splice(self.r, self.dst, self.pending, flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)
            except BlockingIOError:  # the destination is full: stop reading until it drains
                self.loop.remove_reader(self.src)
                self.loop.add_writer(self.dst, self._writable)
                return
            except OSError:
                self._finish(False)
                return
            self.pending -= m
            self.account(m)

    def _writable(self) -> None:
        self._flush()
        if not self.pending and not self.finished:
            self.loop.remove_writer(self.dst)
            self.loop.add_reader(self.src, self._readable)

    def _finish(self, clean: bool) -> None:
        if not self.finished:
            self.finished = True
            self.close()
            self.done(clean)

    def close(self) -> None:
        self.loop.remove_reader(self.src)
        self.loop.remove_writer(self.dst)
        for fd in (self.r, self.w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.r = self.w = -1


class _Conn:
    """One client connection: collect the ClientHello, decide, then two splices until both
    directions end (or either fails, which closes both)."""

    def __init__(self, owner: TlsPassthrough, sock: socket.socket, port: int) -> None:
        self.owner = owner
        self.loop = asyncio.get_running_loop()
        self.sock = sock
        self.port = port  # the port the client used: the origin is asked on the same one
        self.origin: socket.socket | None = None
        self.hello = b""
        self.splices: list[_Splice] = []
        self.ended = 0
        self.closed = False
        self.timer: asyncio.TimerHandle | None = self.loop.call_later(owner.settings.edge_tls_hello_timeout_s,
                                                                      self._too_slow)
        owner.live.add(self)
        self.loop.add_reader(sock.fileno(), self._hello_readable)

    def _too_slow(self) -> None:
        self.timer = None
        if not self.splices:
            self.owner.counters["tls.refused.timeout"] += 1
            self.close()

    def _hello_readable(self) -> None:
        try:
            data = self.sock.recv(MAX_HELLO)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        self.hello += data
        need = hello_record_length(self.hello)
        if need is None or need > MAX_HELLO:
            self.refuse(Refuse(400, "tls-not-hello", ""), None)
            return
        if len(self.hello) < need:
            return
        self.loop.remove_reader(self.sock.fileno())
        sni = parse_sni(self.hello)
        task = self.loop.create_task(self.owner.connect(self, valid_sni(sni) if sni is not None else None))
        self.owner.tasks.add(task)
        task.add_done_callback(self.owner.tasks.discard)

    def refuse(self, refusal: Refuse, name: str | None) -> None:
        self.owner.counters["tls.refused." + refusal.reason.removeprefix("tls-")] += 1
        if name is not None and refusal.reason != "tls-not-steered":
            fig = self.owner.figures.host(name)
            if fig is not None:
                fig.refused += 1
        with contextlib.suppress(OSError):
            self.sock.send(ALERT_UNRECOGNIZED_NAME if refusal.reason == "tls-not-steered" else ALERT_HANDSHAKE_FAILURE)
        self.close()

    def relay(self, origin: socket.socket, up: Callable[[int], None], down: Callable[[int], None]) -> None:
        self.splices = [_Splice(self.loop, self.sock, origin, up, self._ended),
                        _Splice(self.loop, origin, self.sock, down, self._ended)]
        for sp in self.splices:
            sp.start()

    def _ended(self, clean: bool) -> None:
        self.ended += 1
        if not clean or self.ended == 2:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.splices:
            self.loop.remove_reader(self.sock.fileno())
        for sp in self.splices:
            sp.close()
        for sock in (self.sock, self.origin):
            if sock is not None:
                sock.close()
        self.owner.live.discard(self)


class TlsPassthrough:
    """Listeners on the configured TLS ports; ``start`` binds them all or fails naming the port."""

    def __init__(self, settings: Settings, index: CacheIndex, counters: Counter[str] | None = None) -> None:
        self.settings = settings
        self.index = index
        self.counters: Counter[str] = counters if counters is not None else Counter()
        self.figures = TlsFigures(self.counters)
        self.resolver = make_async_resolver(settings.upstream_dns, 4096)  # origins kept for their TTL
        self.listeners: list[socket.socket] = []
        self.live: set[_Conn] = set()
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str, ports: tuple[int, ...]) -> list[int]:
        """Listen on host at each port (0 = a free one); the ports bound."""
        loop = asyncio.get_running_loop()
        bound = []
        for port in ports:
            try:
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                lsock = socket.socket(family, socket.SOCK_STREAM)
                lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                lsock.bind((host, port))
                lsock.listen(1024)
                lsock.setblocking(False)
            except OSError as exc:
                lsock.close()
                await self.stop()
                advice = bind_advice(port, exc.errno or 0, unprivileged_port_start(), tls=True)
                raise OSError(exc.errno, f"TLS passthrough cannot listen on {host}:{port} "
                                         f"(HEATCACHE_EDGE_TLS_PORTS): {exc.strerror}"
                                         + (f". {advice}" if advice else "")) from exc
            real = lsock.getsockname()[1]
            self.listeners.append(lsock)
            loop.add_reader(lsock.fileno(), self._accept, lsock, real)
            bound.append(real)
        log.info("TLS passthrough on %s ports %s", host, bound)
        return bound

    def _accept(self, lsock: socket.socket, port: int) -> None:
        for _ in range(64):  # a burst of clients in one wake-up, then let others run
            try:
                sock, _addr = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. EMFILE: keep listening, the next wake-up retries
                log.warning("TLS passthrough accept failed: %s", exc)
                return
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _Conn(self, sock, port)

    async def connect(self, client: _Conn, name: str | None) -> None:
        """Decide, resolve, connect, then splice; every failure refuses the client."""
        s = self.settings
        decision = route_tls(name, client.port, self.index, 2 * s.dns_ttl, time.monotonic())
        if isinstance(decision, Refuse):
            client.refuse(decision, name)
            return
        host = decision.host
        fig = self.figures.host(host)
        try:
            address = await resolve_origin_async(self.resolver, host, s.allow_private_origins,
                                                 s.origin_allow_networks)
        except ForbiddenAddress:
            client.refuse(Refuse(403, "tls-internal", ""), host)
            return
        except ResolveError:
            client.refuse(Refuse(502, "tls-unresolved", ""), host)
            return
        if address in (s.node_address, s.node_address6):  # a loop, whatever port (the node behind a Service)
            client.refuse(Refuse(508, "tls-loop", ""), host)
            return
        loop = asyncio.get_running_loop()
        origin = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
        client.origin = origin
        origin.setblocking(False)
        try:
            if s.outbound_address and (":" in s.outbound_address) == (":" in address):
                origin.bind((s.outbound_address, 0))
            origin.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await asyncio.wait_for(loop.sock_connect(origin, (address, client.port)), 10)
            await loop.sock_sendall(origin, client.hello)
        except (OSError, TimeoutError):
            client.refuse(Refuse(502, "tls-origin-failed", ""), host)
            return
        if client.closed:
            return
        counters = self.counters
        counters["tls.connections"] += 1
        if fig is not None:
            fig.connections += 1

        def up(n: int) -> None:
            counters["tls.bytes-up"] += n
            if fig is not None:
                fig.bytes_up += n

        def down(n: int) -> None:
            counters["tls.bytes-down"] += n
            if fig is not None:
                fig.bytes_down += n

        up(len(client.hello))
        client.hello = b""
        client.relay(origin, up, down)

    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        for lsock in self.listeners:
            loop.remove_reader(lsock.fileno())
            lsock.close()
        self.listeners = []
        for conn in list(self.live):
            conn.close()
        for task in list(self.tasks):
            task.cancel()
        for task in list(self.tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
