"""The fetcher's I/O shell: hot URL in, one aria2 download, a catalog row and a CacheEvent out.

The origin is resolved through the upstream resolver and checked (no private addresses unless
allowed); aria2 then fetches that pinned address with the original Host header, so a DNS answer
that changes between the check and the download cannot redirect the fetch inward.
"""

from __future__ import annotations

import http.client
import logging
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aria2p
from confluent_kafka import KafkaError, Message

from cachestore import open_store
from cachestore.catalog import Catalog, open_catalog
from cachestore.store import ObjectMeta, StoreRefused
from heatcache import contract
from heatcache.cachekey import BadUrl, split_host
from heatcache.contract import CacheEvent, DecodeError, FetchProgress, HotUrl
from heatcache.kafkautil import consumer, dead_letter, producer, publish_metrics
from heatcache.lifecycle import StopFlag, announce_ready
from heatcache.resolve import ResolveError, make_async_resolver, resolve_origin
from heatcache.safety import ForbiddenAddress
from heatcache.settings import Settings

log = logging.getLogger(__name__)


class FetchError(RuntimeError):
    """A download that failed for a reason worth recording (state=failed)."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where to fetch a URL from: the pinned address plus what to send as Host."""

    url: str  # http://address:port/path?query
    host_header: str
    host: str


def plan_fetch(url: str, address_of: object) -> Target:
    """Validate an http URL and pin it to the address ``address_of(host)`` returns (pure given it)."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise FetchError(f"unsupported scheme {parts.scheme!r}")
    if parts.username or parts.password:
        raise FetchError("credentials in URL")
    try:
        host, port = split_host(parts.netloc)
    except BadUrl as exc:
        raise FetchError(str(exc)) from None
    address = address_of(host)  # type: ignore[operator]
    literal = f"[{address}]" if ":" in address else address
    path = parts.path or "/"
    query = f"?{parts.query}" if parts.query else ""
    host_header = parts.netloc.lower()
    return Target(url=f"http://{literal}:{port}{path}{query}", host_header=host_header, host=host)


class Fetcher:
    """Consumes `hot-urls` one at a time; each object is fetched at most once while cached."""

    def __init__(self, settings: Settings, bootstrap: str, catalog: Catalog | None = None) -> None:
        self.settings = settings
        self.root = settings.cache_root.resolve()
        self.tmp = self.root / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.catalog = catalog or open_catalog(settings.catalog)
        self.store = open_store(settings, self.catalog)
        self.resolver = make_async_resolver(settings.upstream_dns)
        self.aria2 = aria2p.API(aria2p.Client(host=settings.aria2_rpc_host, port=settings.aria2_rpc_port,
                                              secret=settings.aria2_secret.get_secret_value(), timeout=10))
        self.producer = producer(bootstrap)
        self.consumer = consumer(bootstrap, settings.topic_prefix + "heatcache-fetcher")
        self.counters: Counter[str] = Counter()

    def run(self, stop: StopFlag) -> Counter[str]:
        s = self.settings
        self.consumer.subscribe([s.topic(contract.HOT_URLS)])
        announce_ready("fetch")
        last_metrics = time.monotonic()
        try:
            while not stop.is_set():
                msg = self.consumer.poll(0.5)
                self.producer.poll(0)
                if time.monotonic() - last_metrics > 10:
                    last_metrics = time.monotonic()
                    publish_metrics(self.producer, s, "fetcher", dict(self.counters))
                if msg is None:
                    continue
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        log.warning("consumer error: %s", err)
                    continue
                self.handle(msg)
                self.consumer.store_offsets(msg)
        finally:
            self.producer.flush(30)
            self.consumer.close()  # commits the stored offsets
            self.catalog.close()
            log.info("fetcher stopped: %s", dict(self.counters))
        return self.counters

    def handle(self, msg: Message) -> None:
        try:
            hot = contract.decode(msg.value(), HotUrl)
        except DecodeError as exc:
            self.counters["dead-letter"] += 1
            dead_letter(self.producer, self.settings, msg, str(exc))
            return
        existing = self.catalog.get(hot.cache_key)
        if existing is not None and existing.state == "cached" and (self.root / existing.path).exists():
            self.counters["already-cached"] += 1
            return
        try:
            self._progress(hot, "running")
            event = self.fetch(hot)
            self.counters["fetched"] += 1
            self.counters["fetched-bytes"] += event.size
            self._progress(hot, "done", event.size, event.size)
        except (FetchError, ForbiddenAddress, ResolveError, BadUrl, StoreRefused) as exc:
            log.warning("fetch of %s failed: %s", hot.url, exc)
            self.counters["failed"] += 1
            event = CacheEvent(cache_key=hot.cache_key, state="failed", url=hot.url, host=hot.host,
                               node=self.settings.node_name, ts=time.time(), error=str(exc)[:500])
            self._progress(hot, "failed", error=event.error)
        self.producer.produce(self.settings.topic(contract.CACHE_EVENTS), key=hot.cache_key.encode(),
                              value=contract.encode(event))
        self.producer.flush(30)

    def _progress(self, hot: HotUrl, state: str, done: int = 0, total: int = 0, speed: float = 0.0,
                  error: str = "") -> None:
        """One FetchProgress on `fetch-progress` (the console's progress bars); never blocks."""
        event = FetchProgress(cache_key=hot.cache_key, state=state, url=hot.url, host=hot.host, done_bytes=done,
                              total_bytes=total, speed_bps=speed, ts=time.time(), error=error,
                              node=self.settings.node_name)
        self.producer.produce(self.settings.topic(contract.FETCH_PROGRESS), key=hot.cache_key.encode(),
                              value=contract.encode(event))
        self.producer.poll(0)

    def fetch(self, hot: HotUrl) -> CacheEvent:
        s = self.settings
        target = plan_fetch(hot.url, lambda h: resolve_origin(self.resolver, h, s.allow_private_origins))
        work = self.tmp / f"fetch-{hot.cache_key.__hash__() & 0xffffffff:08x}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            path = self._download(target, work, hot)
            meta = self._head(target)
            result = self.store.commit_file(path, hot.cache_key, ObjectMeta(
                hot.url, hot.host, meta.get("etag", ""), meta.get("last-modified", ""), meta.get("content-type", ""),
                heat=hot.clients, source="fetch"))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return result.event

    def _download(self, target: Target, work: Path, hot: HotUrl | None = None) -> Path:
        s = self.settings
        try:
            download = self.aria2.add_uris(
                [target.url],
                options={"dir": str(work), "out": "object", "header": [f"Host: {target.host_header}"],
                         "max-tries": "3", "retry-wait": "1", "connect-timeout": "10", "timeout": "30",
                         "allow-overwrite": "true", "auto-file-renaming": "false", "remote-time": "false"},
            )
        except aria2p.ClientException as exc:
            raise FetchError(f"aria2 refused the download: {exc}") from None
        deadline = time.monotonic() + s.fetch_timeout_s
        last_progress = 0.0
        try:
            while True:
                download.update()
                if hot is not None and time.monotonic() - last_progress >= 0.5:
                    last_progress = time.monotonic()
                    self._progress(hot, "running", download.completed_length, download.total_length,
                                   float(download.download_speed))
                if download.total_length > s.max_object_bytes:
                    raise FetchError(f"object larger than {s.max_object_bytes} bytes")
                if download.status == "complete":
                    break
                if download.status in ("error", "removed"):
                    raise FetchError(f"aria2: {download.error_message or download.status}")
                if time.monotonic() > deadline:
                    raise FetchError("download timed out")
                time.sleep(0.1)
        finally:
            if download.status != "complete":
                try:
                    self.aria2.remove([download], force=True, files=True, clean=True)
                except aria2p.ClientException:
                    pass
            try:
                self.aria2.client.remove_download_result(download.gid)
            except aria2p.ClientException:
                pass
        path = work / "object"
        if not path.exists():
            raise FetchError("aria2 reported completion but wrote no file")
        return path

    def _head(self, target: Target) -> dict[str, str]:
        """Validators and type from a HEAD (aria2 does not hand back response headers)."""
        parts = urlsplit(target.url)
        source = (self.settings.outbound_address, 0) if self.settings.outbound_address else None
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=10,
                                          source_address=source)
        try:
            conn.request("HEAD", parts.path + (f"?{parts.query}" if parts.query else ""),
                         headers={"Host": target.host_header, "User-Agent": "heatcache-fetcher"})
            resp = conn.getresponse()
            if resp.status != 200:
                return {}
            return {k.lower(): v for k, v in resp.getheaders()
                    if k.lower() in ("etag", "last-modified", "content-type")}
        except OSError:
            return {}
        finally:
            conn.close()
