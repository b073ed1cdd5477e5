"""The edge's hit front: a lean asyncio protocol in front of the aiohttp application.

Every connection starts here. A plain GET/HEAD for a cached object (``hits.parse_simple_head``
says which requests are plain) is answered in place: headers from the pure planner, sent with
MSG_MORE, then the body straight from the file with ``os.sendfile``, without a Request, a router
or a task per request — aiohttp's per-request cost is what kept small hits at a tenth of nginx.
Anything else (a miss, a purge, a health check, a malformed or unusual request) hands the
connection, with every byte not yet answered, to aiohttp's own protocol, which keeps it to the end.

The front and the edge meet only through :class:`FrontWiring`: the one routing decision
(``route.route``, the same the aiohttp path asks), the open objects, and two callbacks to book a
hit and count an event. The front never sees the ``Edge``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from cachestore.paths import resolve_in_root
from dns_redirect.hits import (
    MAX_HEAD,
    SimpleHead,
    accel_head,
    head_end,
    head_start,
    http_date,
    parse_simple_head,
    plan_hit,
)
from dns_redirect.route import Hit, Route

if TYPE_CHECKING:
    from heatcache.contract import CacheEvent

IDLE_S = 75.0  # like aiohttp's keep-alive timeout; also bounds a head that never completes
MAX_BUFFERED = 4 * MAX_HEAD  # pipelined bytes held while a large body is still going out
# request headers that make a hit's answer depend on the request (else the prebuilt 200 head)
_PLAIN = frozenset({"range", "if-none-match", "if-modified-since", "if-match", "if-unmodified-since"})


class OpenObject(NamedTuple):
    fd: int
    size: int
    etag: str
    last_modified: str
    content_type: str
    plain: bytes  # head_start() of the plain 200 answer


class OpenObjects:
    """Cache files kept open between hits, for one version of the index.

    Opening a file by path costs more than the rest of a small hit together. Any change to a
    stored object (a new fetch, an in-path fill, a purge, an eviction) reaches the index as a
    CacheEvent and bumps its version, so all descriptors are dropped then; between the change on
    disk and its event, a hit gets the previous copy of the same object, as it would have a moment
    earlier. ``os.sendfile`` takes explicit offsets, so one descriptor serves many hits at once."""

    def __init__(self, root: Path, limit: int = 256) -> None:
        self.root = root
        self.limit = limit
        self.version = -1
        self.files: dict[str, OpenObject] = {}

    def get(self, entry: CacheEvent, version: int) -> OpenObject | None:
        if version != self.version:
            self.close()
            self.version = version
        obj = self.files.get(entry.path)
        if obj is not None:
            return obj
        try:
            fd = os.open(resolve_in_root(self.root, entry.path), os.O_RDONLY | os.O_CLOEXEC)
        except (ValueError, OSError):
            return None  # escaping path, or evicted under us: aiohttp's handler decides
        try:
            st = os.fstat(fd)
            etag, modified = entry.etag, entry.last_modified  # the origin's validators, never our own
            plain = head_start(plan_hit(st.st_size, etag, modified, entry.content_type))
        except BaseException:
            os.close(fd)
            raise
        if len(self.files) >= self.limit:
            self.close()
        obj = self.files[entry.path] = OpenObject(fd, st.st_size, etag, modified, entry.content_type, plain)
        return obj

    def close(self) -> None:
        for obj in self.files.values():
            os.close(obj.fd)
        self.files.clear()


class _Tails:
    """Date changes once a second: the four possible head tails are built then, not per hit."""

    def __init__(self) -> None:
        self.second = -1
        self.tails: dict[tuple[bool, bool], bytes] = {}

    def get(self, keep_alive: bool, http10: bool) -> bytes:
        now = int(time.time())
        if now != self.second:
            date = http_date(now)
            self.tails = {(ka, h10): head_end(date, ka, h10) for ka in (True, False) for h10 in (True, False)}
            self.second = now
        return self.tails[keep_alive, http10]


@dataclass
class FrontWiring:
    """Everything the front needs from the edge, and nothing more."""

    route: Callable[[SimpleHead], Route]  # the edge's one routing decision for this head
    objects: OpenObjects
    book_hit: Callable[[str], None]  # a hit of this cache key is about to be sent
    count: Callable[[str], None]  # bump one of the edge's counters
    handoff: Callable[[], asyncio.Protocol]  # aiohttp's protocol for the rest of a connection
    accel_prefix: str = ""  # nginx in front: answer X-Accel-Redirect instead of the body
    tails: _Tails = field(default_factory=_Tails)
    sent: Callable[[int, str], None] | None = None  # (body bytes of a hit, client address): savings counters

    def answer(self, head: SimpleHead) -> tuple[bytes, int, int, int] | None:
        """A plain request the front can answer from disk: (head bytes, open file descriptor
        (shared: not to be closed), offset, length); None when the route is not a hit (or the
        file is gone), and aiohttp's handler, asking the same route, answers."""
        decision = self.route(head)
        if not isinstance(decision, Hit):
            return None
        obj = self.objects.get(decision.entry, decision.version)
        if obj is None:
            return None
        self.book_hit(decision.entry.cache_key)
        tail = self.tails.get(head.keep_alive, head.http10)
        if self.accel_prefix:
            return accel_head(self.accel_prefix, decision.entry.path, obj.content_type) + tail, obj.fd, 0, 0
        h = head.headers
        if not _PLAIN.isdisjoint(h):
            plan = plan_hit(obj.size, obj.etag, obj.last_modified, obj.content_type, h.get("if-none-match", ""),
                            h.get("if-modified-since", ""), h.get("range", ""), h.get("if-range", ""),
                            h.get("if-match", ""), h.get("if-unmodified-since", ""))
            length = plan.length if plan.status in (200, 206) and head.method != "HEAD" else 0
            return head_start(plan) + tail, obj.fd, plan.start, length
        return obj.plain + tail, obj.fd, 0, obj.size if head.method != "HEAD" else 0


class HitFront(asyncio.Protocol):
    """One client connection, for as long as its requests are plain hits."""

    def __init__(self, wiring: FrontWiring, live: set[HitFront]) -> None:
        self.wiring = wiring
        self.live = live
        self.transport: asyncio.Transport | None = None
        self.sock: socket.socket | None = None
        self.buf = b""
        self.busy = False  # a body is still being sent as the client makes room
        self.pending: tuple[int, int, int, bool] | None = None  # file, offset, end, keep-alive
        self.handed = False
        self.peer = ""  # the client's address (per-network savings)
        self.last = time.monotonic()
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport (uvloop's is not a subclass)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else ""
        raw = transport.get_extra_info("socket")
        # our own handle on the same socket (a dup), for send(MSG_MORE) and sendfile; asyncio's
        # wrapper forbids direct I/O. Used only while the transport's write buffer is empty.
        self.sock = socket.socket(fileno=os.dup(raw.fileno()))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.live.add(self)
        self.timer = asyncio.get_running_loop().call_later(IDLE_S, self._idle_check)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._release()

    def _release(self) -> None:
        if self.pending is not None:
            self._end_pending()
        self.live.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _idle_check(self) -> None:
        self.timer = None
        if self.transport is None or self.handed:
            return
        idle = time.monotonic() - self.last
        if idle >= IDLE_S and not self.busy:
            self.transport.close()
        else:
            self.timer = asyncio.get_running_loop().call_later(max(1.0, IDLE_S - idle), self._idle_check)

    def data_received(self, data: bytes) -> None:
        self.buf = self.buf + data if self.buf else data
        if self.busy:
            if len(self.buf) > MAX_BUFFERED and self.transport is not None:
                self.transport.pause_reading()
            return
        self._process()

    def _process(self) -> None:
        transport = self.transport
        while self.buf and not self.busy and transport is not None and not transport.is_closing():
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    self._hand_off()
                return
            head = parse_simple_head(self.buf[:end])
            hit = self.wiring.answer(head) if head is not None else None
            if hit is None or head is None:
                self._hand_off()
                return
            self.buf = self.buf[end + 4:]
            self.last = time.monotonic()
            header, fd, start, length = hit
            if self.wiring.sent is not None:
                self.wiring.sent(length, self.peer)
            self._send(header, fd, start, length, head.keep_alive)

    def _send(self, header: bytes, fd: int, start: int, length: int, keep_alive: bool) -> None:
        transport, sock = self.transport, self.sock
        assert transport is not None and sock is not None
        try:
            sent = 0
            if transport.get_write_buffer_size() == 0:
                with contextlib.suppress(BlockingIOError):
                    sent = sock.send(header, socket.MSG_MORE if length else 0)
            if sent < len(header):
                transport.write(header[sent:])
            done = 0
            if length and transport.get_write_buffer_size() == 0:
                with contextlib.suppress(BlockingIOError):
                    while done < length:  # one call for most objects; stops when the socket is full
                        n = os.sendfile(sock.fileno(), fd, start + done, length - done)
                        if n == 0:
                            break
                        done += n
        except OSError:  # the client hung up (or the file failed) mid-answer: nothing more to send
            self.wiring.count("client-gone")
            transport.abort()
            return
        if done < length:
            # The rest goes out as the client reads, still by sendfile: the loop watches our dup
            # of the socket for room (the transport's own fd is the transport's to watch). The
            # file is dup'ed too: the shared descriptor may be closed when the index changes.
            self.busy = True
            self.wiring.count("front.deferred")
            self.pending = (os.dup(fd), start + done, start + length, keep_alive)
            asyncio.get_running_loop().add_writer(sock.fileno(), self._send_more)
            return
        if not keep_alive:
            transport.close()

    def _send_more(self) -> None:
        transport, sock, pending = self.transport, self.sock, self.pending
        assert transport is not None and sock is not None and pending is not None
        fd, offset, end, keep_alive = pending
        if transport.get_write_buffer_size():
            return  # the head is still in the transport's buffer: it must leave first
        try:
            with contextlib.suppress(BlockingIOError):
                while offset < end:
                    n = os.sendfile(sock.fileno(), fd, offset, end - offset)
                    if n == 0:
                        raise ConnectionResetError("file shorter than planned")
                    offset += n
        except OSError:
            self.wiring.count("client-gone")
            self._end_pending()
            transport.abort()
            return
        if offset < end:
            self.pending = (fd, offset, end, keep_alive)
            return
        self._end_pending()
        self.last = time.monotonic()
        if not keep_alive:
            transport.close()
            return
        transport.resume_reading()
        self._process()

    def _end_pending(self) -> None:
        if self.pending is not None:
            os.close(self.pending[0])
            self.pending = None
        if self.sock is not None:
            asyncio.get_running_loop().remove_writer(self.sock.fileno())
        self.busy = False

    def _hand_off(self) -> None:
        """From here on aiohttp owns the connection; it gets the bytes we have not answered."""
        transport = self.transport
        assert transport is not None
        self.handed = True
        self.wiring.count("front.handed-off")
        self._release()
        proto = self.wiring.handoff()
        transport.set_protocol(proto)
        proto.connection_made(transport)
        data, self.buf = self.buf, b""
        if data:
            proto.data_received(data)

    def close(self) -> None:
        if self.transport is not None and not self.handed:
            self.transport.close()
