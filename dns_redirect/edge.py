"""The edge HTTP server on the cache node.

A request for a cached object is served from disk (zero copy ``sendfile``; Range, HEAD and
conditional requests decided by the pure planner in ``hits.py``), by the lean protocol in
``front.py`` for plain requests and by aiohttp otherwise; anything else for a
steered host is streamed through from the origin, resolved through the upstream resolver (never
our own DNS) and never to internal addresses. Hosts that are not steered are refused: the edge is
not an open proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import hmac
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web
from confluent_kafka import Producer
from multidict import CIMultiDict

from cachestore import open_store
from cachestore.catalog import Catalog, open_catalog
from cachestore.coherence import fresh_until, refuse_to_store
from cachestore.paths import resolve_in_root
from cachestore.store import ObjectMeta, PendingObject, StoreRefused
from dns_redirect.front import FrontWiring, HitFront, OpenObjects
from dns_redirect.hits import HitPlan, SimpleHead, if_range_holds, may_fill, plan_growing, plan_hit, preconditions
from dns_redirect.index import CacheIndex
from dns_redirect.ports import bind_advice, edge_listeners, parse_port_map, tls_client_ports, unprivileged_port_start
from dns_redirect.route import FORWARDED, VIA, Hit, KeyMemo, Passthrough, Refuse, Route, route
from heatcache import contract
from heatcache.cachekey import BadUrl, cache_key
from heatcache.contract import CacheEvent
from heatcache.networks import NetworkNamer
from heatcache.resolve import ResolveError, make_async_resolver, resolve_origin_async
from heatcache.safety import ForbiddenAddress
from heatcache.settings import Settings

log = logging.getLogger(__name__)

ORIGIN_CACHE_ENTRIES = 4096  # origins' addresses kept for their DNS TTL (a miss does not resolve again)

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "transfer-encoding", "upgrade", "proxy-connection"})
HEALTH_PATH = "/.heatcache/health"
PURGE_PATH = "/.heatcache/purge"
HIT_FLUSH_S = 5.0
# a background whole-object fill asks without the client's conditions (it wants the current object)
_CONDITIONAL = frozenset({"range", "if-range", "if-match", "if-none-match", "if-modified-since",
                          "if-unmodified-since"})


COLLAPSE_AHEAD_BYTES = 4 * 1024**2  # a follower's range may start this far past what the leader has
COLLAPSE_STALL_S = 30.0  # a follower whose leader brings no byte for this long is cut
COLLAPSE_HEADERS_S = 5.0  # a miss waits this long for a likely leader's origin headers (nginx's lock timeout)


class SharedFill:
    """An object being stored as it streams past (a miss's in-path fill or a background fill),
    with the origin's 200 answer and its Content-Length (None for a chunked answer): concurrent
    misses of its key follow it (collapsed forwarding) and read the bytes from the fill's file
    as they are flushed, instead of asking the origin again. A follower never gets bytes the
    leader has not received from the origin; if the fill ends short or fails, a follower's
    connection is cut before its Content-Length or final chunk. ``ok`` is set only once the
    origin's body has ended complete by its own framing (the Content-Length reached, or the final
    chunk), with the ``size`` and ``sha256`` the writer computed over the stream; a follower that
    served the whole object checks its own digest of the file against them before its last bytes."""

    def __init__(self, path: Path, length: int | None, headers: Mapping[str, str]) -> None:
        self.path = path
        self.length = length
        self.headers = headers
        self.written = 0  # flushed to path
        self.done = False
        self.ok = False
        self.size = -1
        self.sha256 = ""
        self._event = asyncio.Event()

    def grew(self, written: int) -> None:
        self.written = written
        self._wake()

    def end(self, ok: bool, size: int = -1, sha256: str = "") -> None:
        if not self.done:
            self.done, self.ok, self.size, self.sha256 = True, ok, size, sha256
            self._wake()

    @property
    def total(self) -> int | None:
        """The object's length once known: the origin's Content-Length or the stored size."""
        return self.length if self.length is not None else self.size if self.ok else None

    def _wake(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def changed(self) -> None:
        await self._event.wait()


def from_start(range_header: str) -> bool:
    """``bytes=0-``: the whole object, as a range (what video players ask first)."""
    return range_header.replace(" ", "").lower() == "bytes=0-"


class Edge:
    """The edge's state and handlers; ``app()`` builds the aiohttp application."""

    def __init__(self, settings: Settings, index: CacheIndex, rules: Any, catalog: Catalog | None = None,
                 producer: Producer | None = None, hit_flush_s: float = HIT_FLUSH_S) -> None:
        self.settings = settings
        self.hit_flush_s = hit_flush_s
        self.index = index
        self.rules = rules
        self.catalog = catalog
        self.producer = producer
        # the one writer of the cache (quota, eviction, atomic rename, catalog row); without a
        # catalog of its own (tests) the edge keeps one at the settings' catalog URL
        self.store = open_store(settings, catalog if catalog is not None else open_catalog(settings.catalog)) \
            if settings.edge_fill else None
        self.root = settings.cache_root.resolve()
        self.resolver = make_async_resolver(settings.upstream_dns, ORIGIN_CACHE_ENTRIES)
        self.counters: Counter[str] = Counter()
        self.session: aiohttp.ClientSession | None = None
        self.pending_hits: dict[str, tuple[int, float]] = {}
        # requests served since BypassWatch last collected them: hits by cache key, misses by host
        self.served_keys: Counter[str] = Counter()
        self.served_hosts: Counter[str] = Counter()
        self._flusher: asyncio.Task[None] | None = None
        self.keys = KeyMemo(rules)
        self._open = OpenObjects(self.root)
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self._more: list[asyncio.Server] = []  # the listeners of the other ports (``listen``)
        self._wiring: FrontWiring | None = None
        # the client ports this edge serves (HTTP) and the TLS passthrough's: in the health JSON,
        # where the DNS checks that every port a host's keys use is answered (steer)
        self.ports: list[int] = []
        self.tls_ports: list[int] = []
        self.unserved: dict[int, str] = {}  # client port -> why the edge does not listen for it
        self._fronts: set[HitFront] = set()
        self._room_tasks: set[asyncio.Task[None]] = set()
        self._bg_tasks: set[asyncio.Task[None]] = set()  # whole-object fills after range misses
        self._filling: set[str] = set()  # cache keys being stored right now (one store per key at a time)
        self._shared: dict[str, SharedFill] = {}  # fills that concurrent misses of the key follow
        # plain GETs of a key still waiting for the origin's headers: the fill they may start, or None
        self._asking: dict[str, asyncio.Future[SharedFill | None]] = {}
        self.tls_hosts: Callable[[], dict[str, dict[str, int]]] | None = None  # the TLS passthrough's per-host figures
        self.networks = NetworkNamer(settings.console_networks)  # named client networks, for savings

    async def start(self, host: str, port: int, *, reuse_address: bool = True, backlog: int = 1024) -> None:
        """Listen on host:port: the hit front first, aiohttp behind it for everything else."""
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        server = self._runner.server
        assert server is not None
        wiring = self._wiring = FrontWiring(self._route_head, self._open, self._book_hit, self._count, server,
                             self.settings.edge_accel_prefix, sent=self._hit_bytes)
        self._listener = await asyncio.get_running_loop().create_server(
            lambda: HitFront(wiring, self._fronts), host, port, reuse_address=reuse_address, backlog=backlog)

    async def listen(self, host: str, port: int, *, reuse_address: bool = True, backlog: int = 1024) -> int:
        """One more listener (another port clients use) on the same front and app; after
        ``start``. Returns the port bound (``port`` 0: a free one)."""
        assert self._wiring is not None, "start() first"
        wiring = self._wiring
        server = await asyncio.get_running_loop().create_server(
            lambda: HitFront(wiring, self._fronts), host, port, reuse_address=reuse_address, backlog=backlog)
        self._more.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening, close idle front connections, let aiohttp finish its own (and flush
        the pending hit counts to the catalog)."""
        if self._listener is not None:
            self._listener.close()
        for extra in self._more:
            extra.close()
        for front in list(self._fronts):
            front.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._listener is not None:
            await self._listener.wait_closed()
            self._listener = None
        for extra in self._more:
            await extra.wait_closed()
        self._more.clear()
        self._open.close()

    def _book_hit(self, key: str) -> None:
        self.counters["hits"] += 1
        self.served_keys[key] += 1  # the bypass ratio's "served" half (folded per host by BypassWatch)
        n, _last = self.pending_hits.get(key, (0, 0.0))
        self.pending_hits[key] = (n + 1, time.time())

    def _hit_bytes(self, length: int, peer: str) -> None:
        """Body bytes served from the cache, in total and per named client network (the
        console's savings; in the health answer's counters)."""
        self.counters["hit_bytes"] += length
        if self.networks:
            self.counters["hit_bytes.net." + (self.networks.name(peer) or "other")] += length

    def _count(self, name: str) -> None:
        self.counters[name] += 1

    def route(self, method: str, host_header: str, target: str, via: Iterable[str]) -> Route:
        """The one routing decision, for the front and the aiohttp path alike."""
        return route(method, host_header, target, via, self.index, self.keys, 2 * self.settings.dns_ttl,
                     time.monotonic())

    def _route_head(self, head: SimpleHead) -> Route:
        h = head.headers
        return self.route(head.method, h.get("host", ""), head.target, (h.get("via", ""),))

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024**2, handler_args={"max_field_size": 16384, "max_headers": 100})
        app.router.add_get(HEALTH_PATH, self.health)
        app.router.add_post(PURGE_PATH, self.purge)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        app.on_startup.append(self._startup)
        app.on_cleanup.append(self._cleanup)
        return app

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.hit_flush_s)
            await self.flush_hits()

    async def flush_hits(self) -> None:
        """Hit bookkeeping goes to the catalog in batches, off the event loop."""
        if not self.pending_hits or self.catalog is None:
            return
        batch, self.pending_hits = self.pending_hits, {}
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.catalog.record_hits, batch)
        except Exception as exc:  # a database outage must not take the edge down; counts are kept
            log.warning("hit bookkeeping failed, will retry: %s", exc)
            for key, (n, last) in batch.items():
                old_n, old_last = self.pending_hits.get(key, (0, 0.0))
                self.pending_hits[key] = (old_n + n, max(old_last, last))

    async def _startup(self, _app: web.Application) -> None:
        if self.catalog is not None:
            self._flusher = asyncio.create_task(self._flush_loop())
        local = (self.settings.outbound_address, 0) if self.settings.outbound_address else None
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=local, limit=256),
                                             auto_decompress=False,
                                             timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60))

    async def _cleanup(self, _app: web.Application) -> None:
        for task in list(self._bg_tasks):
            task.cancel()
        if self._bg_tasks:
            await asyncio.gather(*self._bg_tasks, return_exceptions=True)
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self.flush_hits()
        if self.session is not None:
            await self.session.close()

    async def purge(self, request: web.Request) -> web.Response:
        """``POST /.heatcache/purge`` with ``Authorization: Bearer <token>`` and {"url": "..."}
        (one object), {"prefix": "..."} or {"host": "..."} (every match)."""
        token = self.settings.purge_token.get_secret_value()
        if not token:
            return web.Response(status=404, text="purge is disabled\n")
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            self.counters["refused.purge-auth"] += 1
            return web.Response(status=401, headers={"WWW-Authenticate": "Bearer"}, text="unauthorized\n")
        try:
            body = await request.json()
            if isinstance(body, dict) and ("prefix" in body or "host" in body):
                return await self._purge_many(str(body.get("prefix", "")), str(body.get("host", "")))
            url = str(body["url"])
            scheme, _, rest = url.partition("://")
            authority, slash, tail = rest.partition("/")
            key = cache_key(authority, slash + tail if slash else "/", self.rules, scheme or "http")
        except (ValueError, KeyError, TypeError, BadUrl) as exc:
            return web.Response(status=400, text=f"bad purge request: {exc}\n")
        entry = self.index.get(key)
        if entry is None:
            return web.json_response({"purged": False, "cache_key": key}, status=404)
        event = CacheEvent(cache_key=key, state="purged", url=entry.url, host=entry.host,
                           node=self.settings.node_name, ts=time.time())
        self.index.apply(event)  # misses from now on, before the topic comes back round
        if self.store is not None:  # the store deletes the file and marks the row
            stored = await asyncio.get_running_loop().run_in_executor(None, self.store.remove, key, "purged")
            event = stored or event
        else:
            with contextlib.suppress(ValueError, OSError):
                resolve_in_root(self.root, entry.path).unlink()
            if self.catalog is not None:
                await asyncio.get_running_loop().run_in_executor(None, self.catalog.set_state, key, "purged")
        self._announce(event)
        self.counters["purged"] += 1
        log.info("purged %s", key)
        return web.json_response({"purged": True, "cache_key": key})

    async def _purge_many(self, prefix: str, host: str) -> web.Response:
        """``{"prefix": "<URL prefix>"}`` (cache keys starting with it, as `heatcache purge
        --prefix`) or ``{"host": "<host>"}``: every matching object, each announced."""
        if bool(prefix) == bool(host):
            return web.Response(status=400, text="bad purge request: give one of url, prefix, host\n")
        if self.store is None:
            return web.Response(status=501, text="purge by prefix or host needs the cache store (edge fill on)\n")
        store = self.store
        events = await asyncio.get_running_loop().run_in_executor(
            None, lambda: store.purge(prefix=prefix) if prefix else store.purge(host=host))
        for event in events:
            self.index.apply(event)
            self._announce(event)
        self.counters["purged"] += len(events)
        log.info("purged %d objects (%s)", len(events), f"prefix {prefix}" if prefix else f"host {host}")
        return web.json_response({"purged": len(events), "cache_keys": [e.cache_key for e in events]})

    async def health(self, _request: web.Request) -> web.Response:
        body: dict[str, Any] = {"ok": True, "objects": len(self.index.objects), **self.counters}
        if self.tls_hosts is not None:
            body["tls_hosts"] = self.tls_hosts()
        if self.ports:
            body["ports"], body["tls_ports"] = self.ports, self.tls_ports
        if self.unserved:  # client ports the edge could not listen on, and why (with the fix)
            body["unserved_ports"] = {str(p): why for p, why in self.unserved.items()}
        return web.json_response(body)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        decision = self.route(request.method, request.headers.get("Host", ""), request.raw_path,
                              request.headers.getall("Via", []))
        if isinstance(decision, Refuse):
            self.counters["refused." + decision.reason] += 1
            headers = {"Allow": ", ".join(sorted(FORWARDED))} if decision.status == 405 else None
            return web.Response(status=decision.status, text=decision.text, headers=headers)
        if isinstance(decision, Hit):
            entry = decision.entry
            try:
                path = resolve_in_root(self.root, entry.path)
            except ValueError:
                path = None
            if path is not None:
                resp = await self.serve_hit(request, path, entry)
                if resp is not None:
                    return resp
        shared = self._shared.get(decision.key) if not isinstance(decision, Passthrough) and decision.key else None
        if shared is None and not isinstance(decision, Passthrough) and decision.key in self._asking:
            shared = await self._headers_of(decision.key)
        if shared is not None:
            followed = await self.follow(request, decision.key, shared)
            if followed is not None:
                return followed
        return await self.pass_through(request, decision.host, decision.port, decision.key,
                                       store=not isinstance(decision, Passthrough))

    async def serve_hit(self, request: web.Request, path: Path, entry: CacheEvent) -> web.StreamResponse | None:
        """Headers from the pure planner, body by ``loop.sendfile`` (zero copy), no thread hops:
        the object is a local file the fetcher wrote and never changes in place."""
        try:
            fobj = open(path, "rb")
        except OSError:
            return None  # evicted under us: pass through
        self._book_hit(entry.cache_key)  # before the first byte leaves: the client may have it all first
        if self.settings.edge_accel_prefix:
            fobj.close()
            return web.Response(headers={"X-Accel-Redirect": self.settings.edge_accel_prefix + quote(entry.path),
                                         "Content-Type": entry.content_type or "application/octet-stream"})
        try:
            st = os.fstat(fobj.fileno())
            h = request.headers
            # the origin's validators, never our own (they survive steering switching on and off)
            plan = plan_hit(st.st_size, entry.etag, entry.last_modified, entry.content_type,
                            h.get("If-None-Match", ""), h.get("If-Modified-Since", ""), h.get("Range", ""),
                            h.get("If-Range", ""), h.get("If-Match", ""), h.get("If-Unmodified-Since", ""))
            resp = web.StreamResponse(status=plan.status, headers=plan.headers)
            if plan.status in (200, 206) and request.method != "HEAD":
                self._hit_bytes(plan.length, request.remote or "")
            if plan.status != 304:  # a 304 carries neither a body nor a length
                resp.content_length = plan.length if plan.status in (200, 206) else 0
            try:
                await resp.prepare(request)
                if plan.length and plan.status in (200, 206) and request.method != "HEAD":
                    transport = request.transport
                    if transport is None:
                        raise ConnectionResetError("connection lost")
                    try:
                        await asyncio.get_running_loop().sendfile(transport, fobj, plan.start, plan.length)
                    except NotImplementedError:  # uvloop has no loop.sendfile: copy (a rare path here)
                        fobj.seek(plan.start)
                        left = plan.length
                        while left > 0 and (chunk := fobj.read(min(left, 256 * 1024))):
                            await resp.write(chunk)
                            left -= len(chunk)
                await resp.write_eof()
            except ConnectionError:
                self.counters["client-gone"] += 1  # the client hung up mid-answer: nothing to send
            return resp
        finally:
            fobj.close()

    async def follow(self, request: web.Request, key: str, shared: SharedFill) -> web.StreamResponse | None:
        """Collapsed forwarding: a miss of a key whose fill is running is answered from that fill's
        file (whole or a range of it, headers from the pure hit planner with the origin's
        validators), not by a second origin request. Preconditions (If-None-Match, If-Match, ...)
        are decided against the validators the fill is storing, If-Range chooses between the range
        and the whole object. When the origin gave no length (chunked), the whole object goes out
        chunked as the file grows, its final chunk only after the store checked the copy; a
        closed range waits for its bytes. None when this request cannot follow (credentials, an
        HTTP/1.0 client of a fill of unknown length, an open or suffix range of one, a range far
        past the bytes received so far, a leader that stalls first): it passes through as before."""
        h = request.headers
        if request.method not in ("GET", "HEAD") or "Authorization" in h:
            return None
        origin = shared.headers
        etag, modified, ctype = origin.get("ETag", ""), origin.get("Last-Modified", ""), origin.get("Content-Type", "")
        conditions = {"if_none_match": h.get("If-None-Match", ""), "if_modified_since": h.get("If-Modified-Since", ""),
                      "if_match": h.get("If-Match", ""), "if_unmodified_since": h.get("If-Unmodified-Since", "")}
        verdict = preconditions(etag, modified, **conditions)
        rng = h.get("Range", "")
        if rng and "If-Range" in h and not if_range_holds(h["If-Range"], etag, modified):
            rng = ""  # the client's copy is another version: the whole object (RFC 9110 13.1.5)
        try:
            fobj = open(shared.path, "rb")  # the inode stays readable after the rename or an abort
        except OSError:
            return None
        try:
            if verdict:  # 304 or 412: only headers, from the origin's validators
                plan = plan_hit(0, etag, modified, ctype, **conditions)
                self.counters["collapse.conditional"] += 1  # answered, no body: not a "collapsed" follower
            else:
                found = await self._follow_plan(request, shared, rng, etag, modified, ctype)
                if found is None:
                    self.counters["collapse.passed"] += 1
                    return None
                plan = found
                self.counters["collapsed"] += 1
            return await self._serve_follow(request, key, shared, fobj, plan)
        finally:
            fobj.close()

    async def _follow_plan(self, request: web.Request, shared: SharedFill, rng: str, etag: str, modified: str,
                           ctype: str) -> HitPlan | None:
        """The answer's plan; ``length`` -1: the whole object, of a length not known yet."""
        if shared.total is None:
            if request.version < aiohttp.HttpVersion11 and request.method == "GET":
                return None  # no chunked coding: its end would look the same whether the fill completes or not
            kind, first, last = plan_growing(rng)
            if kind == "pass":
                return None
            if kind == "range":
                if first > shared.written + COLLAPSE_AHEAD_BYTES:
                    return None
                while shared.written <= last and not shared.done:  # its bytes, or the end (and the total)
                    try:
                        await asyncio.wait_for(shared.changed(), COLLAPSE_STALL_S)
                    except TimeoutError:
                        return None
                if shared.written > last and shared.total is None:
                    plan = plan_hit(1 << 62, etag, modified, ctype, range_header=rng)
                    plan.headers["Content-Range"] = f"bytes {first}-{last}/*"  # RFC 9110 14.4: total unknown
                    return plan
                if shared.total is None:  # ended short of the range without a stored copy
                    return None
            else:
                base = plan_hit(0, etag, modified, ctype)
                return HitPlan(200, 0, -1, base.headers)
        total = shared.total
        assert total is not None
        plan = plan_hit(total, etag, modified, ctype, range_header=rng)
        if plan.status in (200, 206) and plan.start > shared.written + COLLAPSE_AHEAD_BYTES:
            return None
        return plan

    async def _serve_follow(self, request: web.Request, key: str, shared: SharedFill, fobj: Any,
                            plan: HitPlan) -> web.StreamResponse:
        self._book_hit(key)
        resp = web.StreamResponse(status=plan.status, headers={**plan.headers, "X-Cache": "COLLAPSED"})
        if plan.status != 304 and plan.length >= 0:  # a 304 carries neither a body nor a length
            resp.content_length = plan.length if plan.status in (200, 206) else 0
        try:
            await resp.prepare(request)
            if request.method == "HEAD" or plan.status not in (200, 206) or not plan.length:
                await resp.write_eof()
                return resp
            # the whole object: its last bytes go out only once the origin's body has ended whole and
            # the file matches the writer's size and sha256, so a failed fill never looks complete
            whole = plan.start == 0 and (plan.length < 0 or plan.length == shared.total)
            digest = hashlib.sha256() if whole else None
            end = plan.start + plan.length if plan.length >= 0 else None
            pos, held = plan.start, b""
            while end is None or pos < end:
                if shared.written > pos:
                    fobj.seek(pos)
                    limit = shared.written if end is None else min(end, shared.written)
                    data = fobj.read(min(limit, pos + 256 * 1024) - pos)
                    if not data:
                        break
                    pos += len(data)
                    if digest is not None:  # one piece held back
                        digest.update(data)
                        data, held = held, data
                    if data:
                        await resp.write(data)
                    continue
                if shared.done and shared.written <= pos:  # ended: nothing more will come
                    break
                try:
                    await asyncio.wait_for(shared.changed(), COLLAPSE_STALL_S)
                except TimeoutError:
                    break
            complete = pos == end if end is not None else shared.ok
            if complete and digest is not None:
                while not shared.done:  # the leader's verdict on the origin's body
                    try:
                        await asyncio.wait_for(shared.changed(), COLLAPSE_STALL_S)
                    except TimeoutError:
                        break
                complete = shared.ok and pos == shared.size and digest.hexdigest() == shared.sha256
            if not complete:  # never pad or guess: no final chunk, a short body; the client asks again
                self.counters["collapse.cut"] += 1
                if request.transport is not None:
                    request.transport.close()
                return resp
            if held:
                await resp.write(held)
            await resp.write_eof()
        except ConnectionError:
            self.counters["client-gone"] += 1
        return resp

    async def _headers_of(self, key: str) -> SharedFill | None:
        """A miss of a key whose likely leader is still waiting for the origin's headers waits for
        them (at most COLLAPSE_HEADERS_S, then it asks the origin itself, as nginx's
        proxy_cache_lock_timeout does): the fill it then follows, or None when none started."""
        try:
            return await asyncio.wait_for(asyncio.shield(self._asking[key]), COLLAPSE_HEADERS_S)
        except TimeoutError:
            self.counters["collapse.passed"] += 1
            return None

    def _settle(self, key: str, asking: asyncio.Future[SharedFill | None], fill: SharedFill | None) -> None:
        if not asking.done():
            asking.set_result(fill)
        if self._asking.get(key) is asking:
            del self._asking[key]

    async def pass_through(self, request: web.Request, host: str, port: int, key: str = "",
                           store: bool = True) -> web.StreamResponse:
        """A miss: ``_pass_through``; a plain GET of a storable key that no one is filling is a
        likely leader, and other misses of the key wait for its origin headers (``_headers_of``)."""
        h = request.headers
        asking: asyncio.Future[SharedFill | None] | None = None
        plain = (request.method == "GET" and "Authorization" not in h
                 and (from_start(h.get("Range", "")) or "Range" not in h)
                 and not any(n in h for n in _CONDITIONAL if n != "range"))
        if plain and key and store and self.store is not None and key not in self._filling | self._asking.keys():
            asking = self._asking[key] = asyncio.get_running_loop().create_future()
        try:
            return await self._pass_through(request, host, port, key, store, asking)
        finally:
            if asking is not None:
                self._settle(key, asking, None)

    async def _pass_through(self, request: web.Request, host: str, port: int, key: str, store: bool,
                            asking: asyncio.Future[SharedFill | None] | None) -> web.StreamResponse:
        """Stream a miss from the origin without buffering the body; store it as it passes when
        ``store`` and ``may_fill`` allow (the bytes cross the uplink once either way).

        Redirects are never followed here: a 3xx goes to the client as it came, so no hop of a
        redirect chain is fetched by the node (an origin cannot point the edge inwards)."""
        try:
            address = await resolve_origin_async(self.resolver, host, self.settings.allow_private_origins,
                                                 self.settings.origin_allow_networks)
        except ForbiddenAddress:
            self.counters["refused.internal"] += 1
            return web.Response(status=403, text="origin address not allowed\n")
        except ResolveError as exc:
            self.counters["miss.unresolved"] += 1
            return web.Response(status=502, text=f"cannot resolve origin: {exc}\n")
        # the origin resolving to this node is a loop whatever the port (behind a Service the edge's
        # own port is not the one clients use)
        if address in (self.settings.node_address, self.settings.node_address6):
            self.counters["refused.loop"] += 1
            return web.Response(status=508, text="origin resolves to this edge\n")
        literal = f"[{address}]" if ":" in address else address
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["Via"] = VIA
        range_header = request.headers.get("Range", "")
        # A player's first `Range: bytes=0-` of a storable object: ask the origin for the whole
        # object (the same bytes), store it as it passes and answer the client's range from it
        whole = bool(key and store and self.store is not None and request.method == "GET"
                     and from_start(range_header) and "If-Range" not in request.headers
                     and key not in self._filling)
        if whole:
            headers = {k: v for k, v in headers.items() if k.lower() != "range"}
        fill_view = CIMultiDict(request.headers)  # the request as the origin gets it, for may_fill
        if whole:
            fill_view.popall("Range", None)
        assert self.session is not None
        self.counters["misses"] += 1
        self.served_hosts[host] += 1
        resp: web.StreamResponse | None = None
        try:
            body = request.content if request.body_exists else None  # streamed, never buffered
            async with self.session.request(request.method, f"http://{literal}:{port}{request.raw_path}",
                                            headers=headers, data=body, allow_redirects=False) as upstream:
                out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
                out_headers["X-Cache"] = "MISS"
                status, status_reason = upstream.status, upstream.reason
                length_header = upstream.headers.get("Content-Length", "")
                if whole and status == 200 and length_header.isdigit() and int(length_header) > 0:
                    status, status_reason = 206, "Partial Content"  # bytes=0- of the whole object
                    out_headers["Content-Range"] = f"bytes 0-{int(length_header) - 1}/{length_header}"
                    self.counters["fill.range-whole"] += 1
                resp = web.StreamResponse(status=status, reason=status_reason, headers=out_headers)
                await resp.prepare(request)
                fill: PendingObject | None = None
                fill_started = False
                leader: SharedFill | None = None
                if key and store and self.store is not None:
                    reason = may_fill(request.method, fill_view, upstream.status, upstream.headers,
                                      self.store.quota.object_cap())
                    shared = refuse_to_store(fill_view, upstream.status, upstream.headers)
                    if not reason and shared:  # e.g. a Cookie on the request and no public/s-maxage
                        reason = "cookie" if "Cookie" in request.headers else "request"
                    if not reason and key in self._filling:  # another miss of the key is storing it
                        reason = "concurrent"
                    if reason:
                        self.counters["fill.skipped." + reason] += 1
                    else:
                        try:
                            fill = self.store.begin(key)
                            self._filling.add(key)
                            fill_started = True
                            if upstream.status == 200 and request.method == "GET":
                                leader = SharedFill(fill.path, int(length_header) if length_header else None,
                                                    upstream.headers)
                                self._shared[key] = leader  # concurrent misses of the key follow it
                        except OSError as exc:  # a full or failing disk: the client still gets its bytes
                            self._fill_failed(key, exc)
                    if asking is not None:  # the misses waiting for these headers follow (or ask)
                        self._settle(key, asking, leader)
                    if (not whole and request.method == "GET" and upstream.status == 206 and range_header
                            and "Authorization" not in request.headers and "Cookie" not in request.headers
                            and key not in self._filling):
                        # a seek into a never-seen object: its range goes to the client as it
                        # came, the whole object is fetched once in the background
                        self._spawn_background_fill(key, host, f"http://{literal}:{port}{request.raw_path}",
                                                    headers, self._url_of(request, host))
                try:
                    # One chunk is held back: a stored copy is in place (and the index knows it)
                    # before the client has the last byte, so its next request is a hit.
                    held = b""
                    if request.method != "HEAD":
                        async for chunk in upstream.content.iter_chunked(64 * 1024):
                            if held:
                                await resp.write(held)
                            held = chunk
                            if fill is not None:
                                try:
                                    kept = fill.add(chunk)
                                except OSError as exc:  # ENOSPC, EIO: drop the copy, keep streaming
                                    fill.abort()
                                    fill = None
                                    self._fill_failed(key, exc)
                                    if leader is not None:
                                        leader.end(False)  # its followers are cut now, not at our end
                                    continue
                                if not kept:
                                    fill.abort()
                                    fill = None
                                    self.counters["fill.skipped.size"] += 1
                                    if leader is not None:
                                        leader.end(False)
                                elif leader is not None:
                                    leader.grew(fill.flush())
                    if fill is not None:
                        length = upstream.headers.get("Content-Length")
                        if length is None or int(length) == fill.size:
                            if leader is not None:  # the body is whole: followers may end theirs
                                leader.end(True, fill.size, fill.digest.hexdigest())
                            try:
                                await self._finish_fill(fill, key, host, self._url_of(request, host),
                                                        upstream.headers)
                            except StoreRefused as exc:  # over the quota with nothing to evict, ...
                                log.info("in-path store of %s refused: %s", key, exc.reason)
                                self.counters["fill.skipped.quota"] += 1
                                fill.abort()
                            except Exception as exc:  # storing is a bonus: the client still gets its bytes
                                log.warning("in-path store of %s failed: %s", key, exc)
                                self.counters["fill.failed"] += 1
                                fill.abort()
                        else:
                            fill.abort()
                            self.counters["fill.skipped.short"] += 1
                        fill = None
                    if held:
                        await resp.write(held)
                    await resp.write_eof()
                finally:
                    if fill is not None:
                        fill.abort()
                    if fill_started:
                        self._filling.discard(key)
                    if leader is not None:
                        leader.end(False)  # (a no-op after a stored fill)
                        if self._shared.get(key) is leader:
                            del self._shared[key]
                return resp
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.counters["miss.origin-failed"] += 1
            if resp is not None and resp.prepared:
                # headers are gone already: cut the connection so the client sees a short body
                if request.transport is not None:
                    request.transport.close()
                return resp
            return web.Response(status=502, text=f"origin failed: {exc}\n")

    def _fill_failed(self, key: str, exc: OSError) -> None:
        log.warning("in-path store of %s dropped: %s", key, exc)
        self.counters["fill.failed.disk"] += 1
        if exc.errno == errno.ENOSPC and self.store is not None:  # the disk filled from elsewhere: make room
            task = asyncio.get_running_loop().create_task(self._make_room())
            self._room_tasks.add(task)
            task.add_done_callback(self._room_tasks.discard)

    async def _make_room(self) -> None:
        assert self.store is not None
        try:
            events = await asyncio.get_running_loop().run_in_executor(None, self.store.enforce)
        except Exception as exc:  # a database outage: the next fill tries again
            log.warning("eviction after a full disk failed: %s", exc)
            return
        for event in events:
            self.index.apply(event)
            self._announce(event)

    @staticmethod
    def _url_of(request: web.Request, host: str) -> str:
        return f"http://{request.headers.get('Host', host)}{request.raw_path}"

    def _spawn_background_fill(self, key: str, host: str, upstream_url: str, headers: Mapping[str, str],
                               url: str) -> None:
        """One whole-object fetch per key at a time, after a range miss (the issue's 'fetch the
        whole object once in the background')."""
        plain = {k: v for k, v in headers.items() if k.lower() not in _CONDITIONAL}
        self._filling.add(key)  # a second seek meanwhile does not start a second fetch
        task = asyncio.get_running_loop().create_task(self._background_fill(key, host, upstream_url, plain, url))
        self._bg_tasks.add(task)
        task.add_done_callback(self._bg_tasks.discard)

    async def _background_fill(self, key: str, host: str, upstream_url: str, headers: dict[str, str],
                               url: str) -> None:
        assert self.store is not None and self.session is not None
        self.counters["fill.background"] += 1
        fill: PendingObject | None = None
        shared: SharedFill | None = None
        try:
            async with self.session.get(upstream_url, headers=headers, allow_redirects=False) as upstream:
                view = CIMultiDict(headers)
                reason = may_fill("GET", view, upstream.status, upstream.headers, self.store.quota.object_cap())
                if not reason and refuse_to_store(view, upstream.status, upstream.headers):
                    reason = "request"
                if reason:
                    self.counters["fill.skipped." + reason] += 1
                    return
                fill = self.store.begin(key)
                length = upstream.headers.get("Content-Length")
                if upstream.status == 200:  # may_fill passed: a length is digits or absent (chunked)
                    shared = SharedFill(fill.path, int(length) if length else None, upstream.headers)
                    self._shared[key] = shared  # later seeks follow it instead of asking the origin
                async for chunk in upstream.content.iter_chunked(64 * 1024):
                    if not fill.add(chunk):
                        self.counters["fill.skipped.size"] += 1
                        return
                    if shared is not None:
                        shared.grew(fill.flush())
                if length is not None and int(length) != fill.size:
                    self.counters["fill.skipped.short"] += 1
                    return
                if shared is not None:
                    shared.end(True, fill.size, fill.digest.hexdigest())
                await self._finish_fill(fill, key, host, url, upstream.headers)
                fill = None
        except StoreRefused as exc:
            log.info("background store of %s refused: %s", key, exc.reason)
            self.counters["fill.skipped.quota"] += 1
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:  # storing is a bonus
            log.warning("background store of %s failed: %s", key, exc)
            self.counters["fill.failed"] += 1
        finally:
            if fill is not None:
                fill.abort()
            self._filling.discard(key)
            if shared is not None:
                shared.end(False)  # (a no-op after a stored fill)
                if self._shared.get(key) is shared:
                    del self._shared[key]

    async def _finish_fill(self, fill: PendingObject, key: str, host: str, url: str,
                           headers: Mapping[str, str]) -> None:
        """Store the copy through the cache store (quota, eviction, atomic rename, catalog row) and
        announce it like a fetched object, with whatever it evicted."""
        assert self.store is not None
        now = time.time()
        meta = ObjectMeta(url, host, headers.get("ETag", ""), headers.get("Last-Modified", ""),
                          headers.get("Content-Type", ""), headers.get("Cache-Control", ""),
                          fresh_until(headers, now), source="fill")
        result = await asyncio.get_running_loop().run_in_executor(None, self.store.commit_pending, fill, meta, now)
        for event in result.events:
            self.index.apply(event)  # the next request is a hit, before the topic comes back round
            self._announce(event)
        self.counters["fill.stored"] += 1
        self.counters["fill.bytes"] += result.event.size
        self.counters["fill.evicted"] += len(result.evicted)
        log.info("stored in path: %s (%d bytes)", key, result.event.size)

    def _announce(self, event: CacheEvent) -> None:
        if self.producer is not None:
            self.producer.produce(self.settings.topic(contract.CACHE_EVENTS), key=event.cache_key.encode(),
                                  value=contract.encode(event))
            self.producer.poll(0)


async def start_listeners(edge: Edge, settings: Settings) -> list[int]:
    """Start ``edge`` on HEATCACHE_EDGE_PORT and listen on every other port clients use: the
    sniffed ports and the mapped ones (``HEATCACHE_EDGE_PORT_MAP``). The edge's own port must
    listen (an error otherwise); the others are best effort: one the edge cannot bind (port 80
    without the privilege, a port taken) is left out of ``edge.ports``, the health answer's
    list, so the DNS does not steer the hosts whose keys use it. Returns the client ports served."""
    port_map = parse_port_map(settings.edge_port_map)
    plan = edge_listeners(settings.edge_port, settings.sniff_ports, port_map, settings.edge_tls_ports)
    own = next(iter(plan))
    try:
        await edge.start(settings.edge_host, own)
    except OSError as exc:  # the edge's own port: nothing to serve without it
        advice = bind_advice(own, exc.errno or 0, unprivileged_port_start())
        raise OSError(exc.errno, f"edge cannot listen on {settings.edge_host}:{own} (HEATCACHE_EDGE_PORT): "
                                 f"{exc.strerror or exc}" + (f". {advice}" if advice else "")) from exc
    served = list(plan[own])
    for listen, clients in list(plan.items())[1:]:
        try:
            await edge.listen(settings.edge_host, listen)
            served.extend(clients)
        except OSError as exc:
            # safe (those hosts resolve to their origins as before), but said at start with the fix
            advice = bind_advice(listen, exc.errno or 0, unprivileged_port_start())
            log.error("edge cannot listen on %s:%d (%s): hosts with keys on port(s) %s are not steered%s",
                      settings.edge_host, listen, exc.strerror or exc, ",".join(map(str, clients)),
                      f". {advice}" if advice else "")
            edge.unserved.update({c: advice or str(exc.strerror or exc) for c in clients})
    if settings.edge_port:  # port 0 (any free one, tests): nothing to report, the DNS checks no ports
        edge.ports, edge.tls_ports = served, tls_client_ports(settings.edge_tls_ports, port_map)
    return served
