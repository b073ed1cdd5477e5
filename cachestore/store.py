"""The atomic object writer and the quota's enforcement: the one code path that puts an object
into the cache (prefetched by the fetcher or filled in-path by the edge) or takes it out.

Writing: bytes go to a temporary file under ``<root>/tmp`` (same filesystem as the objects); the
finished file's size and SHA-256 are checked against what the caller expects, the quota is
planned (:mod:`cachestore.quota`), lower-ranked objects are evicted if needed
(:func:`cachestore.policy.choose_victims` over the catalog), the file is renamed into place (a
reader sees the old copy or the whole new one, never a partial file) and the catalog row is
written. Each change comes back as CacheEvents for the caller to publish (the fetcher waits for
their delivery reports before committing its offset).

Quota decisions across processes (the edge and the fetcher share the cache) are serialised by an
advisory ``flock`` on ``<root>/.store.lock``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from cachestore.catalog import Catalog, Entry
from cachestore.paths import object_relpath, resolve_in_root
from cachestore.policy import Candidate, PolicyParams, choose_victims
from cachestore.quota import Quota, plan_space
from heatcache.contract import CacheEvent

log = logging.getLogger(__name__)


class StoreRefused(RuntimeError):
    """The object was not stored; ``reason`` says why (over the cap, no room, digest mismatch).
    ``quota``: the quota's decision (over the per-object cap, or no room), for an object of
    ``size`` bytes; otherwise the file itself was wrong."""

    def __init__(self, reason: str, quota: bool = False, size: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.quota = quota
        self.size = size


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    """What the origin said about an object (and who stored it)."""

    url: str
    host: str
    etag: str = ""
    last_modified: str = ""
    content_type: str = ""
    cache_control: str = ""
    fresh_until: float = 0.0
    heat: int = 0
    source: str = "fetch"  # "fetch" (prefetch) or "fill" (in-path)


@dataclass(slots=True)
class StoreResult:
    """The stored object's event, plus one event per object evicted to make room."""

    event: CacheEvent
    entry: Entry
    evicted: list[CacheEvent] = field(default_factory=list)

    @property
    def events(self) -> list[CacheEvent]:
        return [*self.evicted, self.event]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class PendingObject:
    """A copy being written as it streams past (the edge's in-path fill); ``add`` returns False
    once the object outgrows ``limit`` (the caller then aborts). An OSError (ENOSPC, EIO) from
    ``add`` means: abort, the client's answer goes on without storing."""

    def __init__(self, path: Path, cache_key: str, limit: int) -> None:
        self.path = path
        self.cache_key = cache_key
        self.limit = limit
        self.fh = open(path, "wb")
        self.digest = hashlib.sha256()
        self.size = 0

    def add(self, chunk: bytes) -> bool:
        self.size += len(chunk)
        if self.size > self.limit:
            return False
        self.fh.write(chunk)
        self.digest.update(chunk)
        return True

    def flush(self) -> int:
        """Bytes so far readable from ``path`` by others (the edge's collapsed followers)."""
        self.fh.flush()
        return self.size

    def close(self) -> None:
        if not self.fh.closed:
            self.fh.close()

    def abort(self) -> None:
        self.close()
        with contextlib.suppress(OSError):
            self.path.unlink()


class ObjectStore:
    """The cache on disk and in the catalog. Thread-compatible: one writer call at a time per
    process is enough (the fetcher's loop, the edge's executor), the flock covers the rest."""

    def __init__(self, root: Path, catalog: Catalog, node: str, quota: Quota | None = None,
                 params: PolicyParams | None = None) -> None:
        self.root = root.resolve()
        self.tmp = self.root / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.catalog = catalog
        self.node = node
        self.quota = quota or Quota()
        self.params = params or PolicyParams()

    # -- temporary files --------------------------------------------------------------------
    def temp_path(self, prefix: str = "obj") -> Path:
        return self.tmp / f"{prefix}-{uuid.uuid4().hex}"

    def begin(self, cache_key: str) -> PendingObject:
        return PendingObject(self.temp_path("fill"), cache_key, self.quota.object_cap())

    def path_of(self, entry_path: str) -> Path:
        return resolve_in_root(self.root, entry_path)

    # -- writing ----------------------------------------------------------------------------
    def commit_pending(self, pending: PendingObject, meta: ObjectMeta, now: float | None = None) -> StoreResult:
        pending.close()
        try:
            return self._commit(pending.path, pending.cache_key, meta, pending.size, pending.digest.hexdigest(), now)
        finally:
            with contextlib.suppress(OSError):
                pending.path.unlink()  # gone already when the rename happened

    def commit_file(self, path: Path, cache_key: str, meta: ObjectMeta, expected_size: int | None = None,
                    now: float | None = None) -> StoreResult:
        """Store a finished download (the file is moved, so it must be on the cache's filesystem;
        a file elsewhere is copied into ``tmp`` first)."""
        src = Path(path)
        if src.resolve().parent != self.tmp:
            staged = self.temp_path("adopt")
            try:
                os.link(src, staged)
            except OSError:
                import shutil

                shutil.copyfile(src, staged)
            src = staged
        try:
            size = src.stat().st_size
            if expected_size is not None and size != expected_size:
                raise StoreRefused(f"size {size} differs from the expected {expected_size}")
            return self._commit(src, cache_key, meta, size, sha256_file(src), now)
        finally:
            with contextlib.suppress(OSError):
                if src != Path(path):
                    src.unlink()

    def _commit(self, src: Path, cache_key: str, meta: ObjectMeta, size: int, digest: str,
                now: float | None) -> StoreResult:
        now = time.time() if now is None else now
        rel = object_relpath(cache_key)
        final = resolve_in_root(self.root, rel)
        with open(src, "rb") as fh:
            os.fsync(fh.fileno())  # the bytes are on disk before the catalog says so
        if os.path.getsize(src) != size:
            raise StoreRefused("the file changed while it was stored")
        evicted: list[CacheEvent] = []
        with self._locked():
            # the sum from the database, every row only to choose victims: each store read the
            # whole catalog before (O(objects) per object stored, and per gauge every 5 s)
            old = self.catalog.get(cache_key)
            replaced = old.size if old is not None and old.state == "cached" else 0
            plan = plan_space(self.quota, size, self.catalog.cached_bytes(), self._disk_free(), replaced)
            if plan.refused:
                raise StoreRefused(plan.refused, quota=True, size=size)
            if plan.free_bytes:
                evicted = self._evict(self.catalog.cached(), plan.free_bytes, now, keep=frozenset({cache_key}))
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, final)
            entry = Entry(cache_key, meta.url, meta.host, rel, size, digest, meta.etag, meta.last_modified,
                          meta.content_type, "cached", now, fresh_until=meta.fresh_until, checked_at=now,
                          heat=meta.heat, cache_control=meta.cache_control)
            self.catalog.upsert(entry)
        event = CacheEvent(cache_key=cache_key, state="cached", url=meta.url, host=meta.host, path=rel, size=size,
                           sha256=digest, etag=meta.etag, last_modified=meta.last_modified,
                           content_type=meta.content_type, node=self.node, ts=now, source=meta.source)
        log.info("stored %s (%d bytes, %s)%s", cache_key, size, meta.source,
                 f", evicted {len(evicted)}" if evicted else "")
        return StoreResult(event, entry, evicted)

    # -- removing ---------------------------------------------------------------------------
    def remove(self, cache_key: str, state: str, now: float | None = None, reason: str = "") -> CacheEvent | None:
        """Delete an object's file and mark its row (``evicted``, ``purged``); None if not cached."""
        with self._locked():
            entry = self.catalog.get(cache_key)
            if entry is None or entry.state != "cached":
                return None
            return self._drop(entry, state, time.time() if now is None else now, reason)

    def purge(self, *, key: str = "", prefix: str = "", host: str = "", now: float | None = None) -> list[CacheEvent]:
        """Delete every cached object matching one key, a key prefix or a host; their
        CacheEvent(purged) for the caller to publish (what `heatcache purge` and the edge's API do)."""
        if sum(map(bool, (key, prefix, host))) != 1:
            raise ValueError("purge needs exactly one of key, prefix, host")
        at = time.time() if now is None else now
        with self._locked():
            if key:
                rows = [e for e in [self.catalog.get(key)] if e is not None and e.state == "cached"]
            elif host:
                rows = [e for e in self.catalog.by_host(host.lower().rstrip(".")) if e.state == "cached"]
            else:
                rows = [e for e in self.catalog.cached() if e.cache_key.startswith(prefix)]
            return [self._drop(e, "purged", at, "purge") for e in rows]

    def make_room(self, need_bytes: int, now: float | None = None) -> list[CacheEvent]:
        """Evict lowest-ranked objects until ``need_bytes`` are free (a full disk elsewhere)."""
        with self._locked():
            return self._evict(self.catalog.cached(), need_bytes, time.time() if now is None else now)

    def enforce(self, now: float | None = None) -> list[CacheEvent]:
        """Bring the cache back under its quota and free-disk floor (at start, after a change of
        settings, or when the disk filled from elsewhere)."""
        with self._locked():
            cached = self.catalog.cached()
            plan = plan_space(replace(self.quota, max_object_fraction=1.0, max_object_bytes=1 << 62), 0,
                              sum(e.size for e in cached), self._disk_free())
            need = plan.free_bytes if not plan.refused else sum(e.size for e in cached)
            return self._evict(cached, need, time.time() if now is None else now) if need else []

    def used_bytes(self) -> int:
        return self.catalog.cached_bytes()

    def _evict(self, cached: list[Entry], need: int, now: float,
               keep: frozenset[str] = frozenset()) -> list[CacheEvent]:
        candidates = [Candidate(e.cache_key, e.size, e.hits, max(e.last_hit, e.fetched_at), e.heat) for e in cached]
        by_key = {e.cache_key: e for e in cached}
        out = []
        for victim in choose_victims(candidates, need, self.params, keep):
            out.append(self._drop(by_key[victim.key], "evicted", now, "quota"))
        return out

    def _drop(self, entry: Entry, state: str, now: float, reason: str) -> CacheEvent:
        with contextlib.suppress(ValueError, FileNotFoundError):
            resolve_in_root(self.root, entry.path).unlink()
        self.catalog.set_state(entry.cache_key, state)
        log.info("%s %s (%d bytes)%s", state, entry.cache_key, entry.size, f": {reason}" if reason else "")
        return CacheEvent(cache_key=entry.cache_key, state=state, url=entry.url, host=entry.host, path=entry.path,
                          size=entry.size, node=self.node, ts=now, error=reason)

    # -- helpers ----------------------------------------------------------------------------
    def _disk_free(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.root / ".store.lock", "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
