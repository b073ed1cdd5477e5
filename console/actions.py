"""Operator actions, one code path for the console page and the CLI (`heatcache control ...`,
`heatcache purge ...`): purge an object, a URL prefix or a host; pin/unpin a URL or host;
pause/resume prefetching; stop/start steering.

An object purge goes through the edge's authenticated purge API (``POST /.heatcache/purge``),
which deletes the file, marks the catalog row and announces CacheEvent(purged); a prefix or host
purge is one call of the cache store's ``ObjectStore.purge(prefix=|host=)`` (what `heatcache purge
--prefix|--host` does: files, catalog rows and the store's lock in one place), its
CacheEvent(purged)s published on `cache-events` and acknowledged before the answer. Switches are
ControlEvents on the compacted `control` topic (heatcache/control.py).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from console.model import CatalogRow
from heatcache import contract
from heatcache.contract import DecodeError
from heatcache.control import make_event, publish_control
from heatcache.settings import Settings

ACTIONS = ("purge-url", "purge-prefix", "purge-host", "pin-url", "pin-host", "prefetch", "steering")


class ActionError(ValueError):
    """An action that cannot be done; the message is for the operator."""


@dataclass(frozen=True, slots=True)
class Action:
    """What the operator asked: ``kind`` in ACTIONS, its subject and value (validated)."""

    kind: str
    subject: str = ""
    value: str = ""
    by: str = ""


def parse_action(body: Any, by: str = "") -> Action:
    """Validate an action request (a JSON object from the page or the CLI's arguments)."""
    if not isinstance(body, dict):
        raise ActionError("an action is a JSON object")
    kind = body.get("action")
    subject = body.get("subject", "")
    value = body.get("value", "")
    if kind not in ACTIONS:
        raise ActionError(f"unknown action {kind!r}; one of {', '.join(ACTIONS)}")
    if not isinstance(subject, str) or not isinstance(value, str) or len(subject) > 2048:
        raise ActionError("subject and value must be strings (subject up to 2048 characters)")
    subject = subject.strip()
    if kind.startswith("purge") or kind.startswith("pin"):
        if not subject:
            raise ActionError(f"{kind} needs a subject (URL, prefix or host)")
    if kind.startswith("purge-url") or kind == "purge-prefix":
        if not subject.startswith(("http://", "https://")):
            raise ActionError("a URL or prefix starts with http:// or https://")
    allowed = {"pin-url": contract.CONTROL_VALUES["url"], "pin-host": contract.CONTROL_VALUES["host"],
               "prefetch": {"paused", "running"}, "steering": {"stopped", "running"}}.get(kind)
    if allowed is not None and value not in allowed:
        raise ActionError(f"{kind} value must be one of {sorted(allowed)}")
    return Action(kind, subject, value, by)


def purge_targets(action: Action, rows: Iterable[CatalogRow]) -> list[str]:
    """The cached URLs a purge covers (pure): one URL, every URL under a prefix, a host's URLs."""
    cached = [r for r in rows if r.state == "cached"]
    if action.kind == "purge-url":
        return [action.subject]
    if action.kind == "purge-prefix":
        return sorted({r.url for r in cached if r.url.startswith(action.subject)
                       or r.cache_key.startswith(action.subject)})
    host = action.subject.lower().rstrip(".")  # a host, or host:port as in the cache key
    return sorted({r.url for r in cached if r.host.lower() == host or urlsplit(r.cache_key).netloc.lower() == host})


class Actions:
    """Carries out actions; ``rows`` reads the catalog, ``producer`` writes `control`."""

    def __init__(self, settings: Settings, producer: Any, rows: Callable[[], list[CatalogRow]]) -> None:
        self.settings = settings
        self.producer = producer
        self.rows = rows

    def run(self, action: Action) -> dict[str, Any]:
        if action.kind.startswith("purge"):
            return self.purge(action)
        target = {"pin-url": "url", "pin-host": "host"}.get(action.kind, action.kind)
        try:
            event = make_event(target, action.value, action.subject if target in ("url", "host") else "",
                               by=action.by)
        except DecodeError as exc:
            raise ActionError(str(exc)) from None
        publish_control(self.producer, self.settings.topic(contract.CONTROL), event)
        return {"ok": True, "action": action.kind, "control": {"key": event.key, "value": event.value}}

    def purge(self, action: Action) -> dict[str, Any]:
        if action.kind in ("purge-prefix", "purge-host"):
            return self.purge_in_store(action)
        urls = purge_targets(action, self.rows() if action.kind != "purge-url" else [])
        results = [self.purge_url(u) for u in urls]
        purged = [r["cache_key"] for r in results if r.get("purged")]
        if not urls:
            raise ActionError(f"nothing cached matches {action.subject!r}")
        return {"ok": bool(purged), "action": action.kind,
                "purged": purged, "not_cached": [r.get("cache_key", r.get("url")) for r in results
                                                 if not r.get("purged")]}

    def purge_in_store(self, action: Action) -> dict[str, Any]:
        """A prefix or host purge through the cache store, announced on `cache-events`."""
        from cachestore import open_store
        from cachestore.catalog import CatalogUnavailable, open_catalog

        if self.producer is None:
            raise ActionError("purging needs the broker (HEATCACHE_KAFKA_BOOTSTRAP) to announce it")
        try:
            catalog = open_catalog(self.settings.catalog)
        except CatalogUnavailable as exc:
            raise ActionError(f"the catalog is unavailable: {exc}") from None
        try:
            store = open_store(self.settings, catalog)
            if action.kind == "purge-prefix":
                events = store.purge(prefix=action.subject)
            else:  # the catalog's host, and the cache keys of that host[:port] (keys carry the port)
                host = action.subject.lower().rstrip(".")
                events = store.purge(host=host)
                for scheme in ("http", "https"):
                    events += store.purge(prefix=f"{scheme}://{host}/")
        except CatalogUnavailable as exc:
            raise ActionError(f"the catalog is unavailable: {exc}") from None
        finally:
            catalog.close()
        if not events:
            raise ActionError(f"nothing cached matches {action.subject!r}")
        failed: list[str] = []
        topic = self.settings.topic(contract.CACHE_EVENTS)
        for event in events:
            self.producer.produce(topic, key=event.cache_key.encode(), value=contract.encode(event),
                                  on_delivery=lambda err, _m: failed.append(str(err)) if err is not None else None)
        left = self.producer.flush(30)
        purged = [e.cache_key for e in events]
        if left or failed:  # deleted, but not every purge announced: say so (the edge still lists them)
            return {"ok": False, "action": action.kind, "purged": purged, "not_cached": [],
                    "error": f"{left + len(failed)} purge event(s) not acknowledged by the broker"}
        return {"ok": True, "action": action.kind, "purged": purged, "not_cached": []}

    def purge_url(self, url: str) -> dict[str, Any]:
        """One purge through the edge's API (same as `curl -X POST .../.heatcache/purge`)."""
        token = self.settings.purge_token.get_secret_value()
        if not token:
            raise ActionError("purging is disabled: set HEATCACHE_PURGE_TOKEN (the edge's purge API token)")
        s = self.settings
        host = f"[{s.node_address}]" if ":" in s.node_address else s.node_address
        if s.edge_host not in ("0.0.0.0", "::", ""):
            host = f"[{s.edge_host}]" if ":" in s.edge_host else s.edge_host
        req = urllib.request.Request(f"http://{host}:{s.edge_port}/.heatcache/purge", method="POST",
                                     data=json.dumps({"url": url}).encode(),
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                try:
                    return {"url": url, **json.loads(exc.read())}
                except ValueError:
                    raise ActionError("the edge refused the purge: purge is disabled there") from None
            raise ActionError(f"the edge refused the purge: HTTP {exc.code}") from None
        except OSError as exc:
            raise ActionError(f"the edge did not answer: {exc}") from None
        return {"url": url, **body}
