"""A loopback HTTP forward proxy between aria2c and the network that applies the origin address
policy (heatcache/safety.py, via the fetcher's resolver) to EVERY request aria2c makes.

Why: the pre-flight (fetcher/preflight.py) walks the redirect chain and hands aria2c only the
final pinned URL, but an origin may answer the pre-flight with 200 and aria2c's own request with
a redirect, which aria2c follows (it has no switch to stop that) — e.g. to
``http://127.0.0.1:PORT/secret``. Every download is therefore given ``all-proxy`` pointing here:
each request (each redirect hop, each retry) reaches the proxy with its absolute URL (or as a
CONNECT for https), the host is resolved and checked, and the request goes out to the CHECKED
address only; a refused one gets ``403`` and its reason is kept per download (the proxy user
name aria2c sends is the job's token), so the fetcher fails the fetch with that reason.

Pure parts (request parsing and rewriting) are module functions; :class:`PolicyProxy` is the
small I/O shell (asyncio, on its own loop in a thread). One request per client connection
(``Connection: close`` both ways): aria2c reconnects for the next one, which keeps the proxy
simple and every request checked.

Where it runs: with ``HEATCACHE_POLICY_PROXY_PORT`` set, as its own process
(``heatcache policy-proxy``: :func:`serve`, started and supervised like aria2c by ``heatcache up``,
a container of the k8s cache pod), and the fetcher talks to it through :class:`RemoteProxy`:
a fetcher restart or crash then leaves aria2c's running downloads on their connections. The
password is derived from the aria2 RPC secret (both sides have it), and the fetcher asks for a
download's refusal reason with ``GET /.heatcache/refused/<token>`` (origin-form, the same proxy
credentials). With port 0 the proxy runs inside the fetcher (:class:`PolicyProxy` directly).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import http.client
import logging
import secrets
import signal
import socket
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote, unquote, urlsplit

from heatcache.settings import Settings

log = logging.getLogger(__name__)

MAX_HEAD = 64 * 1024  # request/response header block limit
REFUSED_PATH = "/.heatcache/refused/"  # origin-form: the fetcher asks why a download was refused
REFUSALS_KEPT = 10_000  # refusal reasons kept for the fetcher to ask (oldest dropped)
HOP_BY_HOP = frozenset({"connection", "proxy-connection", "keep-alive", "proxy-authorization", "proxy-authenticate",
                        "te", "trailer", "upgrade"})


class ProxyRefused(ValueError):
    """The request is not one the proxy forwards (reason in the message)."""


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    host: str  # without brackets
    port: int
    target: str  # origin-form ("/path?q") for GET/HEAD, "" for CONNECT
    headers: tuple[tuple[str, str], ...]
    user: str  # the proxy user (the fetcher's job token), "" if none

    @property
    def url(self) -> str:
        literal = f"[{self.host}]" if ":" in self.host else self.host
        if self.method == "CONNECT":
            return f"https://{literal}:{self.port}/"
        return f"http://{literal}:{self.port}{self.target}"


def _proxy_credentials(value: str) -> tuple[str, str]:
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "basic":
        return "", ""
    try:
        user, _, password = base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")
    except (ValueError, UnicodeDecodeError):
        return "", ""
    return user, password


def parse_request(head: bytes) -> tuple[Request, str]:
    """The request in a proxy request head (up to and including the blank line) and the proxy
    password it carried (pure). ProxyRefused for what a forward proxy for aria2c does not take."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError as exc:  # pragma: no cover - latin-1 decodes every byte
        raise ProxyRefused("undecodable request") from exc
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ProxyRefused("malformed request line")
    method, target, _version = parts
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise ProxyRefused("malformed header")
        headers.append((name, value.strip()))
    auth = next((v for n, v in headers if n.lower() == "proxy-authorization"), "")
    user, password = _proxy_credentials(auth)
    kept = tuple((n, v) for n, v in headers if n.lower() not in HOP_BY_HOP)
    if method == "CONNECT":
        host, sep, port = target.rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise ProxyRefused("CONNECT needs host:port")
        return Request(method, host.strip("[]"), int(port), "", kept, user), password
    if method not in ("GET", "HEAD"):
        raise ProxyRefused(f"method {method} not forwarded")
    split = urlsplit(target)
    if split.scheme != "http" or not split.hostname:
        raise ProxyRefused("only absolute http:// URLs are forwarded")
    if split.username is not None or split.password is not None:
        raise ProxyRefused("credentials in the URL")
    try:
        number = split.port or 80
    except ValueError as exc:
        raise ProxyRefused("bad port") from exc
    path = split.path or "/"
    origin_form = f"{path}?{split.query}" if split.query else path
    return Request(method, split.hostname, number, origin_form, kept, user), password


def refusal_query(head: bytes) -> tuple[str, str] | None:
    """(token, password) of a ``GET /.heatcache/refused/<token>`` asked of the proxy itself (pure);
    None for any other request (a proxied one: absolute URL or CONNECT)."""
    line, _, rest = head.decode("latin-1").partition("\r\n")
    parts = line.split(" ")
    if len(parts) != 3 or parts[0] != "GET" or not parts[1].startswith(REFUSED_PATH):
        return None
    auth = next((v.strip() for n, _, v in (h.partition(":") for h in rest.split("\r\n"))
                 if n.strip().lower() == "proxy-authorization"), "")
    return unquote(parts[1][len(REFUSED_PATH):]), _proxy_credentials(auth)[1]


def upstream_head(req: Request) -> bytes:
    """The request as sent to the origin (pure): origin-form target, hop-by-hop headers dropped,
    ``Connection: close``; a Host header added when the client sent none."""
    lines = [f"{req.method} {req.target} HTTP/1.1"]
    if not any(n.lower() == "host" for n, _ in req.headers):
        literal = f"[{req.host}]" if ":" in req.host else req.host
        lines.append(f"Host: {literal}" + ("" if req.port == 80 else f":{req.port}"))
    lines += [f"{n}: {v}" for n, v in req.headers]
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def response_head(head: bytes) -> bytes:
    """The origin's response head with its connection headers replaced by ``Connection: close``
    (pure): the proxy serves one request per connection."""
    lines = head.decode("latin-1").split("\r\n")
    kept = [lines[0]] + [ln for ln in lines[1:] if ln and ln.partition(":")[0].strip().lower()
                         not in ("connection", "proxy-connection", "keep-alive")]
    return ("\r\n".join([*kept, "Connection: close"]) + "\r\n\r\n").encode("latin-1")


def refusal(status: int, reason: str) -> bytes:
    body = f"heatcache policy proxy: {reason}\n".encode()
    phrase = {400: "Bad Request", 403: "Forbidden", 407: "Proxy Authentication Required",
              502: "Bad Gateway"}.get(status, "Error")
    return (f"HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            f"X-Heatcache-Refused: {reason.encode('ascii', 'replace').decode()[:200]}\r\n"
            "Connection: close\r\n\r\n").encode() + body


Check = Callable[[str], Awaitable[str]]  # host -> checked address; raises with the reason


class PolicyProxy:
    """``start()`` -> port on 127.0.0.1; ``options(token)`` are the aria2 options of a download;
    ``refused(token)`` the reason the proxy refused a request of that download ("" if none)."""

    def __init__(self, check: Check, *, source: str = "", host: str = "127.0.0.1",
                 connect_timeout: float = 10.0, port: int = 0, password: str = "") -> None:
        self.check = check  # the fetcher's resolver + address policy
        self.source = source  # the outbound address to connect from ("" = any)
        self.host = host
        self.port = port  # 0: any free port (inside the fetcher); fixed for the process
        self.connect_timeout = connect_timeout
        # only aria2c (given it per download) may use the proxy
        self.password = password or secrets.token_hex(16)
        self.refusals: OrderedDict[str, str] = OrderedDict()
        self.forwarded = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._writers: set[asyncio.StreamWriter] = set()  # open connections: aborted at stop

    # -- what the fetcher uses
    def options(self, token: str) -> dict[str, str]:
        return {"all-proxy": f"http://{self.host}:{self.port}", "all-proxy-user": token,
                "all-proxy-passwd": self.password}

    def refused(self, token: str) -> str:
        return self.refusals.get(token, "")

    def forget(self, token: str) -> None:
        self.refusals.pop(token, None)

    def alive(self) -> str:
        """"" while the proxy serves, else why not (the fetcher's health shows it)."""
        server = self._server
        return "" if server is not None and server.is_serving() else "the policy proxy is not serving"

    # -- lifecycle
    def start(self) -> int:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(asyncio.start_server(self._client, self.host, self.port))
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:  # a fixed port held by another process
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                drain_and_close(loop)

        self._thread = threading.Thread(target=run, name="policy-proxy", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        log.info("policy proxy for aria2c on %s:%d", self.host, self.port)
        return self.port

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is None or server is None:
            return

        async def close() -> None:
            server.close()
            for writer in list(self._writers):  # at once: a close() waits for unsent bytes
                writer.transport.abort()
            # let each cancelled client run its finally (writer.close()): a task destroyed while
            # pending leaves an unclosed socket behind (ResourceWarning, seen in the kill -9 test).
            # Again while a connection accepted just before the close starts its task (seen under load)
            for _ in range(20):
                tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                if not tasks:
                    break
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await asyncio.sleep(0)  # the transports' connection_lost callbacks

        try:
            asyncio.run_coroutine_threadsafe(close(), loop).result(5)
        except (RuntimeError, TimeoutError) as exc:  # the loop's own end drains what is left
            log.warning("policy proxy: stopping took long (%r)", exc)
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5)

    # -- one client connection, one request
    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            await self._serve(reader, writer)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            await self._close(writer)

    async def _close(self, writer: asyncio.StreamWriter) -> None:
        """Close and wait until the transport is gone (its connection_lost ran): a transport left
        "closing" when the loop stops is an unclosed socket (ResourceWarning, seen in CI under load).
        A peer that reads nothing more keeps a close() waiting for its unsent bytes: then abort."""
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), 2)
        except (Exception, asyncio.CancelledError):
            writer.transport.abort()
        finally:
            self._writers.discard(writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        if len(head) > MAX_HEAD:
            writer.write(refusal(400, "request head too large"))
            return
        query = refusal_query(head)
        if query is not None:  # the fetcher asking why a download of its was refused
            token, password = query
            if not secrets.compare_digest(password, self.password):
                writer.write(refusal(407, "proxy credentials required"))
                return
            body = self.refusals.pop(token, "").encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n%s" % (len(body), body))
            return
        try:
            req, password = parse_request(head)
        except ProxyRefused as exc:
            writer.write(refusal(400, str(exc)))
            return
        if not secrets.compare_digest(password, self.password):
            writer.write(refusal(407, "proxy credentials required"))
            return
        try:
            address = await self.check(req.host)
        except Exception as exc:  # ForbiddenAddress, ResolveError, ...: refused with the reason
            reason = f"{req.url}: {exc}"
            log.warning("policy proxy refused %s", reason)
            if req.user:
                self.refusals[req.user] = reason
                while len(self.refusals) > REFUSALS_KEPT:
                    self.refusals.popitem(last=False)
            writer.write(refusal(403, reason))
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(address, req.port, local_addr=(self.source, 0) if self.source else None),
                self.connect_timeout)
            self._writers.add(up_writer)
        except (TimeoutError, OSError) as exc:
            writer.write(refusal(502, f"{req.url}: {exc or 'connect timed out'}"))
            return
        self.forwarded += 1
        try:
            if req.method == "CONNECT":
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await writer.drain()
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
                return
            up_writer.write(upstream_head(req))
            await up_writer.drain()
            answer = await asyncio.wait_for(up_reader.readuntil(b"\r\n\r\n"), 60)
            writer.write(response_head(answer))
            await _pipe(up_reader, writer)
        finally:
            await self._close(up_writer)


def drain_and_close(loop: asyncio.AbstractEventLoop) -> None:
    """What asyncio.run does at its end: cancel what is left (a connection accepted while the server
    closed), let it finish and the transports' callbacks run, then close the loop."""
    try:
        for _ in range(5):
            pending = asyncio.all_tasks(loop)
            if not pending:
                break
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(asyncio.sleep(0))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while True:
            chunk = await src.read(256 * 1024)
            if not chunk:
                break
            dst.write(chunk)
            await dst.drain()
    finally:
        if dst.can_write_eof():
            try:
                dst.write_eof()
            except OSError:
                pass


# -- the proxy as its own process, and the fetcher's side of it --------------------------------

class ProxyLike(Protocol):
    """What the fetcher uses of a policy proxy (in its process or its own)."""

    def start(self) -> int: ...
    def stop(self) -> None: ...
    def options(self, token: str) -> dict[str, str]: ...
    def refused(self, token: str) -> str: ...
    def forget(self, token: str) -> None: ...
    def alive(self) -> str: ...


def proxy_password(settings: Settings) -> str:
    """The proxy password of the separate process (pure): derived from the aria2 RPC secret,
    which the fetcher and the proxy both have, so no second secret is to be configured."""
    key = settings.aria2_secret.get_secret_value().encode()
    return hmac.new(key, b"heatcache policy proxy", hashlib.sha256).hexdigest()[:32]


def options_differ(current: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    """True if an adopted download's proxy options are not ``wanted`` (pure; the password is not
    compared: aria2 may not report it, and it follows from the RPC secret aria2 was started with)."""
    # aria2 reports all-proxy with a trailing slash ("http://127.0.0.1:6801/")
    return any(str(current.get(k, "")).rstrip("/") != v.rstrip("/") for k, v in wanted.items()
               if k != "all-proxy-passwd")


class RemoteProxy:
    """The fetcher's handle on ``heatcache policy-proxy`` on 127.0.0.1:``port``: the same methods
    as :class:`PolicyProxy`; starting and stopping it is its supervisor's business."""

    def __init__(self, port: int, password: str, host: str = "127.0.0.1", timeout: float = 2.0) -> None:
        self.host, self.port, self.password, self.timeout = host, port, password, timeout

    def start(self) -> int:
        log.info("aria2c's requests go through the policy proxy process on %s:%d", self.host, self.port)
        return self.port

    def stop(self) -> None:
        pass  # not ours: it keeps serving aria2c's running downloads

    def options(self, token: str) -> dict[str, str]:
        return {"all-proxy": f"http://{self.host}:{self.port}", "all-proxy-user": token,
                "all-proxy-passwd": self.password}

    def refused(self, token: str) -> str:
        """The reason the proxy refused a request of this download ("" if none, or if the proxy
        does not answer: aria2c's own error then says why). Asking takes the reason."""
        auth = base64.b64encode(f"fetcher:{self.password}".encode()).decode()
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request("GET", REFUSED_PATH + quote(token, safe=""), headers={"Proxy-Authorization": f"Basic {auth}"})
            resp = conn.getresponse()
            body = resp.read().decode("utf-8", "replace")
            return body if resp.status == 200 else ""
        except (OSError, http.client.HTTPException) as exc:
            log.warning("policy proxy on port %d did not answer: %s", self.port, exc)
            return ""
        finally:
            conn.close()

    def forget(self, token: str) -> None:
        pass  # asking took it

    def alive(self) -> str:
        """"" if the proxy process accepts a connection, else why not: while it is down aria2c's
        downloads fail and are retried, so the fetcher's health says degraded("policy-proxy")."""
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout):
                return ""
        except OSError as exc:
            return f"the policy proxy on {self.host}:{self.port} does not answer: {exc}"


def settings_check(settings: Settings) -> Check:
    """The address policy of the fetcher's pre-flight for each host aria2c asks for: resolved
    upstream, checked with ``check_origin_address`` (the proxy process's own copy of the rule)."""
    from heatcache.resolve import make_async_resolver, resolve_origin_async
    from heatcache.safety import check_origin_address

    resolver = make_async_resolver(settings.upstream_dns)

    async def check(host: str) -> str:
        address = await resolve_origin_async(resolver, host, True)
        return check_origin_address(address, settings.allow_private_origins, settings.origin_allow_networks)

    return check


def proxy_for(settings: Settings, check: Check) -> ProxyLike:
    """The fetcher's proxy: the separate process when ``policy_proxy_port`` is set, else one in
    the fetcher's own process."""
    if settings.policy_proxy_port:
        return RemoteProxy(settings.policy_proxy_port, proxy_password(settings))
    return PolicyProxy(check, source=settings.outbound_address)


def serve(settings: Settings) -> int:
    """``heatcache policy-proxy``: serve on 127.0.0.1:``policy_proxy_port`` until SIGTERM/SIGINT."""
    from heatcache.lifecycle import announce_ready

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_a: stop.set())
    proxy = PolicyProxy(settings_check(settings), source=settings.outbound_address, port=settings.policy_proxy_port,
                        password=proxy_password(settings))
    proxy.start()
    announce_ready("policy-proxy")
    try:
        while not stop.wait(1.0):
            pass
    finally:
        proxy.stop()
        log.info("policy proxy stopped (%d requests forwarded)", proxy.forwarded)
    return 0
