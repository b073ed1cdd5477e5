"""Revalidation of stale objects with the origin (the I/O of one check; the decisions are the
pure functions of :mod:`cachestore.coherence`).

The fetcher runs it, not the edge: every object in the catalog (prefetched or filled in-path by
any edge replica) is asked about once, by the stage that already owns outbound fetching and its
safety (the origin resolved upstream, checked against the address policy and pinned, as the
pre-flight does), and whose events wait for the broker's acknowledgement.

One conditional GET per stale object (``If-None-Match`` / ``If-Modified-Since``):
- 304: the catalog row gets its new freshness and validators;
- 200: the object changed; the answer's body *is* the new copy, so it is streamed into the cache
  store's writer (size cap, sha256, quota) and renamed over the old file in one step: a reader
  has the old bytes or the new ones, never a mix; a body cut short is dropped, the old copy stays;
- 404/410, or the origin now forbids storing it: purged;
- anything else (5xx, a redirect, unreachable): the stale copy is kept within the grace, then
  evicted.
"""

from __future__ import annotations

import http.client
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cachestore.catalog import Entry
from cachestore.coherence import (
    after_error,
    after_not_modified,
    conditional_headers,
    fresh_until,
    refuse_to_store,
    revalidation_outcome,
)
from cachestore.store import ObjectMeta, ObjectStore, StoreRefused
from heatcache.contract import CacheEvent
from heatcache.redirects import parse_hop

USER_AGENT = "heatcache-fetcher"
CHUNK = 256 * 1024


@dataclass(slots=True)
class Revalidated:
    """What one check did: ``outcome`` fresh|changed|gone|kept|evicted|skipped, and the
    CacheEvents to publish."""

    cache_key: str
    outcome: str
    events: list[CacheEvent] = field(default_factory=list)
    detail: str = ""


def revalidate(entry: Entry, store: ObjectStore, resolve: Callable[[str], str], *, stale_grace_s: float,
               timeout: float = 30.0, source: str = "", now: Callable[[], float] = time.time) -> Revalidated:
    """Ask the origin about one stored object and apply the answer (blocking: a worker thread)."""
    key = entry.cache_key
    try:
        hop = parse_hop(entry.url)
        address = resolve(hop.host)  # upstream resolver + address policy, as for a fetch
        conn = http.client.HTTPConnection(address, hop.port, timeout=timeout,
                                          source_address=(source, 0) if source else None)
    except Exception as exc:  # unresolvable, refused address, bad URL: like an origin error
        return _error(entry, store, now(), stale_grace_s, f"origin: {exc}")
    try:
        try:
            conn.request("GET", hop.target, headers={
                "Host": hop.host_header, "User-Agent": USER_AGENT, "Accept-Encoding": "identity",
                **conditional_headers(entry.etag, entry.last_modified)})
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            return _error(entry, store, now(), stale_grace_s, f"origin: {exc}")
        headers: dict[str, str] = {}
        for name, value in resp.getheaders():
            lower = name.lower()
            headers[lower] = f"{headers[lower]}, {value}" if lower in headers else value
        outcome = revalidation_outcome(resp.status)
        at = now()
        if outcome == "fresh":
            merged = after_not_modified({"etag": entry.etag, "last-modified": entry.last_modified,
                                         "cache-control": entry.cache_control}, headers, at)
            store.catalog.refresh(key, float(merged["fresh-until"]), at, merged.get("etag", ""),
                                  merged.get("last-modified", ""), merged.get("cache-control", ""))
            events = []
            if (merged.get("etag", ""), merged.get("last-modified", "")) != (entry.etag, entry.last_modified):
                events.append(_cached_event(entry, store.node, at, merged.get("etag", ""),
                                            merged.get("last-modified", "")))  # the edge serves the new validators
            return Revalidated(key, "fresh", events)
        if outcome == "gone":
            return _drop(entry, store, at, "purged", f"gone at the origin ({resp.status})")
        if outcome == "changed":
            refused = refuse_to_store({}, resp.status, headers)
            if refused:
                return _drop(entry, store, at, "purged", f"not storable any more: {refused}")
            if headers.get("content-encoding", "identity").lower() not in ("identity", ""):
                return _drop(entry, store, at, "purged", "content-encoded answer")
            return _replace(entry, store, resp, headers, at, stale_grace_s)
        return _error(entry, store, at, stale_grace_s, f"origin answered {resp.status}")
    finally:
        conn.close()


def _replace(entry: Entry, store: ObjectStore, resp: http.client.HTTPResponse, headers: dict[str, str],
             at: float, stale_grace_s: float) -> Revalidated:
    """The new body into a temporary file, then one atomic rename over the old copy."""
    pending = store.begin(entry.cache_key)
    try:
        try:
            while chunk := resp.read(CHUNK):
                if not pending.add(chunk):
                    pending.abort()
                    return _drop(entry, store, at, "evicted", "changed object outgrew the cap")
        except (OSError, http.client.HTTPException) as exc:  # cut short: keep the old copy
            pending.abort()
            return _error(entry, store, at, stale_grace_s, f"changed body cut short: {exc}")
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) != pending.size:
            pending.abort()
            return _error(entry, store, at, stale_grace_s, f"changed body of {pending.size} bytes, announced {length}")
        current = store.catalog.get(entry.cache_key)
        if current is None or current.state != "cached":  # purged or evicted meanwhile: do not bring it back
            pending.abort()
            return Revalidated(entry.cache_key, "skipped", detail="no longer cached")
        meta = ObjectMeta(entry.url, entry.host, headers.get("etag", ""), headers.get("last-modified", ""),
                          headers.get("content-type", ""), headers.get("cache-control", ""), fresh_until(headers, at),
                          heat=entry.heat, source="fetch")
        try:
            result = store.commit_pending(pending, meta, now=at)
        except StoreRefused as exc:  # no room for the new copy: the old one is wrong now
            return _drop(entry, store, at, "evicted", f"changed copy refused: {exc.reason}")
        return Revalidated(entry.cache_key, "changed", result.events)
    except BaseException:
        pending.abort()
        raise


def _cached_event(entry: Entry, node: str, at: float, etag: str, last_modified: str) -> CacheEvent:
    return CacheEvent(cache_key=entry.cache_key, state="cached", url=entry.url, host=entry.host, path=entry.path,
                      size=entry.size, sha256=entry.sha256, etag=etag, last_modified=last_modified,
                      content_type=entry.content_type, node=node, ts=at, source="fetch")


def _drop(entry: Entry, store: ObjectStore, at: float, state: str, reason: str) -> Revalidated:
    event = store.remove(entry.cache_key, state, now=at, reason=reason)
    return Revalidated(entry.cache_key, "gone" if state == "purged" else "evicted",
                       [event] if event is not None else [], reason)


def _error(entry: Entry, store: ObjectStore, at: float, stale_grace_s: float, reason: str) -> Revalidated:
    if after_error(entry.fresh_until, at, stale_grace_s) == "evict":
        return _drop(entry, store, at, "evicted", f"stale past the grace: {reason}")
    # asked again after the minimum interval, not at once: the freshness stays as it was
    store.catalog.refresh(entry.cache_key, entry.fresh_until, at, entry.etag, entry.last_modified,
                          entry.cache_control)
    return Revalidated(entry.cache_key, "kept", detail=reason)
