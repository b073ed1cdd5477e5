"""`heatcache console`: the operator's web page (aiohttp), live over Server-Sent Events.

Security: bound to loopback, the page is open to the machine's users (like the stage's other
loopback ports); bound anywhere else it refuses to start without ``HEATCACHE_CONSOLE_TOKEN``, and
then every endpoint, the live stream included, needs the token (``Authorization: Bearer``, or the
cookie set by opening ``/?token=...`` once). State-changing requests (POST) are also protected
against cross-site requests: the Origin (or Referer) must be this console, and the request must
carry the page's CSRF token (a per-process secret the page embeds, unreadable cross-site).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from console.actions import Actions, parse_action
from heatcache.settings import Settings

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
COOKIE = "heatcache_console"
CSRF_HEADER = "X-Heatcache-CSRF"
Snapshot = Callable[[], dict[str, Any]]


def is_loopback(host: str) -> bool:
    """True for loopback addresses and 'localhost' (a bind that no other machine can reach)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def token_required(settings: Settings) -> bool:
    return bool(settings.console_token.get_secret_value()) or not is_loopback(settings.console_host)


def check_bind(settings: Settings) -> None:
    """Refuse an open console: off loopback, a token is mandatory."""
    if not is_loopback(settings.console_host) and not settings.console_token.get_secret_value():
        raise ValueError(f"the console binds {settings.console_host}, not loopback: set HEATCACHE_CONSOLE_TOKEN")


def authorized(request: web.Request, token: str) -> bool:
    given = request.headers.get("Authorization", "")
    if given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), token.encode()):
        return True
    cookie = request.cookies.get(COOKIE, "")
    return bool(cookie) and hmac.compare_digest(cookie.encode(), token.encode())


def same_origin(request: web.Request) -> bool:
    """The request comes from a page of this console (Origin, else Referer, matches Host)."""
    source = request.headers.get("Origin") or request.headers.get("Referer") or ""
    if not source or source == "null":
        return False
    parts = urlsplit(source)
    return bool(parts.netloc) and parts.netloc.lower() == request.host.lower() and parts.scheme in ("http", "https")


class ConsoleServer:
    """The web app; ``snapshot`` gives the page's data, ``actions`` carries out the buttons."""

    def __init__(self, settings: Settings, snapshot: Snapshot, actions: Actions | None, push_s: float = 1.0,
                 counters: Counter[str] | None = None) -> None:
        check_bind(settings)
        self.settings = settings
        self.snapshot = snapshot
        self.actions = actions
        self.push_s = push_s
        self.csrf = secrets.token_urlsafe(32)
        self.token = settings.console_token.get_secret_value()
        self.needs_token = token_required(settings)
        self._runner: web.AppRunner | None = None
        self.counters: Counter[str] = counters if counters is not None else Counter()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=64 * 1024)
        app.router.add_get("/", self.page)
        app.router.add_get("/api/state", self.state)
        app.router.add_get("/api/stream", self.stream)
        app.router.add_post("/api/action", self.action)
        app.router.add_static("/static/", STATIC, show_index=False, follow_symlinks=False)
        return app

    @web.middleware
    async def _guard(self, request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        if self.needs_token and not authorized(request, self.token):
            given = request.query.get("token", "")
            if request.path == "/" and given and hmac.compare_digest(given.encode(), self.token.encode()):
                moved = web.Response(status=303, headers={"Location": "/"})  # token out of the address bar
                moved.set_cookie(COOKIE, self.token, httponly=True, samesite="Strict", path="/")
                return moved
            return web.json_response({"error": "the console needs its token"}, status=401,
                                     headers={"WWW-Authenticate": "Bearer"})
        if request.method not in ("GET", "HEAD"):
            csrf = request.headers.get(CSRF_HEADER, "")
            if not same_origin(request) or not hmac.compare_digest(csrf.encode(), self.csrf.encode()):
                return web.json_response({"error": "cross-site request refused (Origin and CSRF token)"}, status=403)
        resp = await handler(request)
        resp.headers.setdefault("Cache-Control", "no-store")
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("X-Frame-Options", "DENY")
        resp.headers.setdefault("Content-Security-Policy",
                                "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'")
        return resp

    async def page(self, _request: web.Request) -> web.Response:
        html = (STATIC / "index.html").read_text().replace("{{CSRF}}", self.csrf)
        return web.Response(text=html, content_type="text/html")

    async def state(self, _request: web.Request) -> web.Response:
        data = await asyncio.get_running_loop().run_in_executor(None, self.snapshot)
        return web.Response(body=orjson.dumps(data), content_type="application/json")

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """Server-Sent Events: the whole snapshot once a second (a few KB; simplest correct thing)."""
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        self.counters["streams"] += 1
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await loop.run_in_executor(None, self.snapshot)
                await resp.write(b"data: " + orjson.dumps(data) + b"\n\n")
                await asyncio.sleep(self.push_s)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.counters["streams"] -= 1
        return resp

    async def action(self, request: web.Request) -> web.Response:
        if self.actions is None:
            return web.json_response({"error": "actions are not available"}, status=503)
        try:
            body = await request.json()
            act = parse_action(body, by=f"console@{request.remote or '?'}")
            result = await asyncio.get_running_loop().run_in_executor(None, self.actions.run, act)
        except ValueError as exc:  # ActionError, bad JSON
            self.counters["action.refused"] += 1
            return web.json_response({"ok": False, "error": str(exc)}, status=400)
        except (RuntimeError, OSError) as exc:
            self.counters["action.failed"] += 1
            return web.json_response({"ok": False, "error": str(exc)}, status=502)
        self.counters["action.ok" if result.get("ok") else "action.refused"] += 1
        log.info("action %s %s %s by %s: %s", act.kind, act.subject, act.value, act.by, result)
        return web.json_response(result)

    async def start(self, host: str, port: int) -> int:
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def run_console(settings: Settings, bootstrap: str) -> int:
    """The `heatcache console` stage on the one runner: the feed, the web server, until SIGTERM."""
    from console.feed import Feed
    from heatcache.kafkautil import producer
    from heatcache.metrics import CONSOLE
    from heatcache.runner import ConfigError, Runner

    async def main(run: Runner) -> None:
        try:
            check_bind(settings)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        feed = Feed(settings, bootstrap, poll_s=settings.console_refresh_s).start()
        prod = producer(bootstrap, settings)
        server = ConsoleServer(settings, feed.snapshot, Actions(settings, prod, feed.read_catalog),
                               push_s=settings.console_refresh_s, counters=run.counters)
        try:
            port = await server.start(settings.console_host, settings.console_port)
            log.info("console on http://%s:%d/%s", settings.console_host, port,
                     " (token required)" if server.needs_token else "")
            run.ready()
            await run.stopped()
            await server.stop()
        finally:
            feed.stop()
            run.counters["feed-errors"] = feed.errors
            prod.flush(5)

    return Runner(settings, CONSOLE, bootstrap=bootstrap).run_async(main)
