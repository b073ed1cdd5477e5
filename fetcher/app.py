"""The fetcher's I/O shell: hot URLs in, concurrent aria2 downloads, objects stored through the
cache store, CacheEvents out (acknowledged before the offset is stored).

One loop thread owns all state. Per hot URL (a *job*):
1. catalog check (already cached and on disk: done);
2. pre-flight on the fetcher's asyncio thread (fetcher/preflight.py): the redirect chain walked
   by us, each hop resolved upstream, checked and pinned; the final answer judged (status,
   storable, size);
3. the final pinned URL handed to aria2c (bounded overall and per host), with the origin's Host
   header; a download aria2c already has for this job (after a restart of the fetcher) is
   adopted, an interrupted one re-added on the same files with ``continue`` so it resumes;
4. completion comes from aria2's WebSocket notifications (a thread), and a sweep every
   ``fetch_progress_interval_s`` publishes FetchProgress, enforces the size cap on bodies without
   Content-Length and the timeout, and catches anything a lost notification missed;
5. the finished file is checked (size against Content-Length, mtime against Last-Modified) and
   stored by ``cachestore.ObjectStore`` in a worker thread (quota, eviction, atomic rename);
6. its CacheEvents are produced with delivery reports; a failed delivery (broker down past
   ``message.timeout.ms``) is produced again, and the hot-url offset is stored only when every
   event of it and of every earlier message of its partition is acknowledged.

A lost aria2c, database or broker means back-off and retry, never an exit. SIGTERM returns
within a second or two: running downloads stay in aria2c and are adopted after the restart
(their hot-url messages were not committed, so they come again).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import os
import queue
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aria2p
import orjson
import requests
from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition

from cachestore import open_store
from cachestore.catalog import Admission, Catalog, CatalogUnavailable, key_hash, open_catalog
from cachestore.coherence import fresh_until, http_time
from cachestore.store import ObjectMeta, StoreRefused
from fetcher import admission, budget
from fetcher.offsets import OffsetTracker
from fetcher.policyproxy import drain_and_close, options_differ, proxy_for
from fetcher.preflight import Preflight, judge, walk
from fetcher.revalidate import Revalidated, revalidate
from heatcache import contract
from heatcache.cachekey import BadUrl
from heatcache.contract import CacheEvent, DecodeError, FetchProgress, HotUrl
from heatcache.control import ControlFollower
from heatcache.kafkautil import client_config, consumer, producer
from heatcache.lifecycle import StopFlag, announce_ready
from heatcache.redirects import HopRefused
from heatcache.resolve import ResolveError, make_async_resolver, resolve_origin, resolve_origin_async
from heatcache.runner import Runner
from heatcache.safety import ForbiddenAddress, check_origin_address
from heatcache.settings import Settings

log = logging.getLogger(__name__)

ARIA2_ERRORS = (aria2p.ClientException, requests.RequestException, OSError)
STATUS_KEYS = ["gid", "status", "totalLength", "completedLength", "downloadSpeed", "errorMessage", "errorCode", "dir"]
PERMANENT = "permanent: "  # prefix of a failure that no retry can fix
# the start of the reason of a quota refusal, kept in the admission record so that the back-off
# answer to a later admission is marked CacheEvent.refused too
QUOTA_REFUSED = "refused by the cache quota: "
PREFLIGHT_FRESH_S = 30.0  # a pre-flight made ahead of its download slot is trusted this long


class KeptAliveClient(aria2p.Client):
    """aria2p's client on one kept-alive HTTP connection: aria2p opens a new TCP connection per
    call (measured ~4.5 ms a call against ~2.5 ms kept alive, on the loop's critical path)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._session = requests.Session()

    def post(self, payload: str) -> dict[str, Any]:
        answer: dict[str, Any] = self._session.post(self.server, data=payload, timeout=self.timeout).json()
        return answer


class FetchError(RuntimeError):
    """A download that failed for a reason worth recording (state=failed)."""


def backoff(attempt: int, base: float, cap: float = 60.0) -> float:
    """Exponential back-off for the ``attempt``-th retry (1, 2, ...)."""
    return float(min(cap, base * 2 ** max(0, attempt - 1)))


@dataclass
class Owed:
    """Messages whose offsets wait for the acknowledgement of what they produced."""

    offsets: list[tuple[str, int, int]] = field(default_factory=list)
    state: str = "produce"
    deliveries: int = 0  # events produced and not yet acknowledged
    outbox: list[tuple[str, bytes, bytes]] = field(default_factory=list)  # (topic, key, value) to (re)produce


@dataclass
class Job(Owed):
    """One cache key being fetched, and the hot-url messages waiting for it."""

    hot: HotUrl = field(default=None)  # type: ignore[assignment]  # always given
    dir: Path = field(default=Path())
    state: str = "check"  # check, queued, preflight, ready (offpeak), add, running, finish, produce, done
    attempt: int = 0
    ready_at: float = 0.0  # monotonic: when the pre-flight answered (state ready)
    not_before: float = 0.0  # monotonic: back-off
    gid: str = ""
    pre: Preflight | None = None
    started: float = 0.0
    delays: int = 0  # waits for a dependency (database, aria2c), not counted as attempts
    record: Admission | None = None  # what the catalog keeps of this key's admission (set by _check)
    marks: dict[str, float] = field(default_factory=dict)  # phase -> wall time (bench/fetch's timeline)

    @property
    def key(self) -> str:
        return self.hot.cache_key


class Fetcher:
    """Consumes `hot-urls`; each object is fetched at most once while cached."""

    def __init__(self, settings: Settings, bootstrap: str, catalog: Catalog | None = None,
                 runner: Runner | None = None) -> None:
        self.settings = settings
        self.runner = runner
        self.bootstrap = bootstrap
        self.root = settings.cache_root.resolve()
        self.tmp = self.root / "tmp"
        self.jobs_dir = self.tmp / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.catalog = catalog or open_catalog(settings.catalog)
        self.store = open_store(settings, self.catalog)
        self.resolver = make_async_resolver(settings.upstream_dns, cache_entries=4096)  # answers kept for their TTL
        self.aria2 = self._aria2_client()
        self.producer = self._producer()
        # fetch.wait.max.ms 50 (librdkafka's default 500): measured in bench/fetch, a hot URL reached
        # the loop ~100 ms after it was produced with the default, ~50 ms less with this
        self.consumer = consumer(bootstrap, settings.topic_prefix + "heatcache-fetcher", settings,
                                 **{"fetch.wait.max.ms": 50, **self._error_cb(),
                                    # static membership: a restart rejoins at once (rel)
                                    **({"group.instance.id": settings.fetch_instance_id}
                                       if settings.fetch_instance_id else {})})
        self.counters: Counter[str] = runner.counters if runner is not None else Counter()
        self.jobs: dict[str, Job] = {}
        self.owed: dict[str, Owed] = {}  # dead letters waiting for their acknowledgement
        self.by_gid: dict[str, str] = {}
        self._forgotten: list[str] = []  # gids whose aria2 download result is to be removed
        self.timelines: list[tuple[str, dict[str, float]]] | None = None  # set to a list: kept per job
        self.revalidating: set[str] = set()  # cache keys with a conditional request running
        self._workers = 0  # worker threads whose result the loop has not taken yet
        self.offpeak = budget.parse_window(settings.fetch_offpeak_hours)  # ValueError: a config error at start
        self.failure_backoff = admission.FailureBackoff(settings.fetch_failed_backoff_s,
                                                        settings.fetch_failed_backoff_max_s)
        self.offsets = OffsetTracker()
        self.results: queue.Queue[tuple[str, str, Any]] = queue.Queue()  # (key, kind, result) from workers
        self.notified: queue.Queue[str] = queue.Queue()  # gids aria2 says stopped/failed (status asked)
        # gids aria2 says completed: settled without asking their status (while downloads finish
        # together, aria2c answered an RPC only after 20-120 ms, and the next download waited)
        self.completed: queue.Queue[str] = queue.Queue()
        self.reproduce: list[tuple[float, str, str, bytes, bytes]] = []  # (not_before, job key, topic, key, value)
        self.aria2_ok = False
        self.aria2_known: dict[str, dict[str, Any]] = {}  # job dir -> aria2 status, from the reconcile
        self.aria2_retry_at = 0.0
        self._stopping = threading.Event()
        # operator switches (console / `heatcache control`): while prefetching is paused, queued
        # jobs wait (running downloads finish); started in run()
        self.control: ControlFollower | None = None
        self._told_paused: set[str] = set()
        self._listener: threading.Thread | None = None
        self.aria2_listener: aria2p.Client | None = None
        # every request aria2c makes (each redirect hop, each retry) goes through this loopback
        # proxy, which applies the address policy again (rel; fetcher/policyproxy.py)
        self.proxy = proxy_for(settings, self._check_host)
        self.aio = asyncio.new_event_loop()  # pre-flights, all on one thread (started in run())
        self._aio_thread = threading.Thread(target=self._run_aio, name="fetch-preflights", daemon=True)

    # -- clients --------------------------------------------------------------------------
    def _aria2_client(self) -> aria2p.Client:
        s = self.settings
        return KeptAliveClient(host=s.aria2_rpc_host, port=s.aria2_rpc_port,
                               secret=s.aria2_secret.get_secret_value(), timeout=5)

    def _producer(self) -> Producer:
        # Not idempotent: a CacheEvent sent twice is harmless (compacted, per key), and a message
        # that timed out during a broker outage is produced again by us rather than failing the
        # idempotence sequence.
        # linger 5 ms (kafkautil's 20 ms batches for throughput): a CacheEvent is the end of a fetch,
        # and the DNS steers on it; the fetcher produces few of them
        return producer(self.bootstrap, self.settings, **{"enable.idempotence": False, "acks": "all", "linger.ms": 5,
                                           "message.timeout.ms": self.settings.fetch_producer_timeout_ms,
                                           **self._error_cb()})

    def _error_cb(self) -> dict[str, Any]:
        """The runner's error_cb: a lost broker shows as degraded("broker") in /health (rel)."""
        return {"error_cb": self.runner.kafka_error_cb} if self.runner is not None else {}

    # -- the loop ---------------------------------------------------------------------------
    def run(self, stop: StopFlag) -> Counter[str]:
        s = self.settings
        self.proxy.start()
        self._aio_thread.start()
        self.consumer.subscribe([s.topic(contract.HOT_URLS)], on_revoke=self._revoked)
        self._listener = threading.Thread(target=self._listen, name="aria2-notifications", daemon=True)
        self._listener.start()
        self.control = ControlFollower(self.bootstrap, s.topic(contract.CONTROL), config=client_config(s),
                                       health=self.runner.health if self.runner is not None else None)
        self.control.start()
        self.control.wait_ready(10)  # a pause switched before this start holds from the first message
        if self.runner is not None:
            self.runner.ready()
        else:
            announce_ready("fetch")
        last_metrics = last_sweep = time.monotonic()
        last_revalidate = 0.0
        try:
            while not stop.is_set():
                now = time.monotonic()
                if not self.aria2_ok and now >= self.aria2_retry_at:
                    self._connect_aria2()
                # (jobs waiting for the off-peak window do not hold the queue up)
                busy = len(self.jobs) - self._offpeak_jobs() >= 4 * s.fetch_max_concurrent + 64
                # every message waiting, at once: a burst of hot URLs starts its downloads together
                # while a worker (pre-flight, store) is out or a download runs, wait briefly: a result
                # or an aria2 notification (both from other threads) then starts the next download
                # within ~5 ms, not after a whole poll (the consumer cannot be woken)
                wait = 0.005 if self._workers or self.by_gid or not self.notified.empty() else 0.05
                msgs = [] if busy else self._consume(wait)
                if busy:
                    time.sleep(0.05)  # a full queue: let downloads finish before reading more
                self.producer.poll(0)
                for msg in msgs:
                    self._message(msg)
                if msgs:
                    self._advance(time.monotonic())
                self._drain_workers()
                self._drain_notifications()
                self._advance(now)
                self._remove_results()
                self._retry_produce(now)
                if now - last_sweep >= s.fetch_progress_interval_s:
                    last_sweep = now
                    self._sweep()
                if s.revalidate_concurrent and now - last_revalidate >= s.revalidate_interval_s:
                    last_revalidate = now
                    self._revalidate_due()
                if now - last_metrics > 5:
                    last_metrics = now
                    self._gauges()
        finally:
            self._stopping.set()
            if self.control is not None:
                self.control.stop()
                self.control.join(5)
            if self.aria2_listener is not None:
                self.aria2_listener.stop_listening()
            self.producer.flush(2)
            self._drain_deliveries()
            with contextlib.suppress(KafkaException):
                self.consumer.close()  # commits the offsets stored so far
            self.catalog.close()
            self.proxy.stop()
            self._stop_aio()
            log.info("fetcher stopped: %s (%d jobs left to the next start)", dict(self.counters), len(self.jobs))
        return self.counters

    def _consume(self, wait: float) -> list[Message]:
        """Every message waiting, returning as soon as the first arrives: ``consume(n, wait)``
        waits the whole ``wait`` unless n messages come (measured: each burst of hot URLs reached
        the loop ~50 ms late, the idle wait)."""
        first = self.consumer.poll(wait)
        return [] if first is None else [first, *self.consumer.consume(255, 0)]

    def _offpeak_jobs(self) -> int:
        return sum(1 for j in self.jobs.values() if j.state == "offpeak") if self.offpeak is not None else 0

    def _gauges(self) -> None:
        """The gauges the runner's /metrics and snapshots read (the cache's size from the catalog)."""
        why = self.proxy.alive()  # a dead policy proxy fails every download: show it in /health
        if why:
            self._degraded("policy-proxy", why)
        else:
            self._health_ok("policy-proxy")
        c = self.counters
        c["jobs"] = len(self.jobs)
        c["downloads"] = sum(1 for j in self.jobs.values() if j.state == "running")
        c["cache-quota"] = self.store.quota.max_bytes
        with contextlib.suppress(OSError):
            st = os.statvfs(self.root)
            c["cache-free"] = st.f_bavail * st.f_frsize
        try:
            c["cache-used"] = self.store.used_bytes()
            self._health_ok("catalog")
        except CatalogUnavailable as exc:
            self._degraded("catalog", str(exc))

    def _degraded(self, dependency: str, reason: str) -> None:
        if self.runner is not None:
            self.runner.health.degraded(dependency, reason)

    def _health_ok(self, dependency: str) -> None:
        if self.runner is not None:
            self.runner.health.ok(dependency)

    def _drain_deliveries(self) -> None:
        self.producer.poll(0)

    # -- messages ---------------------------------------------------------------------------
    def _message(self, msg: Message) -> None:
        err = msg.error()
        if err is not None:
            if err.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error: %s", err)
            return
        where = (msg.topic() or "", msg.partition() or 0, msg.offset() or 0)
        self.offsets.add(*where)
        try:
            hot = contract.decode(msg.value(), HotUrl)
        except DecodeError as exc:
            self.counters["dead-letter"] += 1
            log.warning("dead-letter %s[%s]@%s: %s", *where, exc)
            value = contract.dead_letter_value(where[0], where[1], where[2], str(exc), msg.value())
            owed = Owed([where])
            dl_key = f"\0dead-letter\0{where}"
            self.owed[dl_key] = owed
            owed.outbox.append((self.settings.topic(contract.DEAD_LETTER), msg.key() or b"", value))
            self._flush_outbox(dl_key, owed)
            return
        job = self.jobs.get(hot.cache_key)
        if job is not None:  # the same object again while it is being fetched: one download
            job.offsets.append(where)
            self.counters["joined"] += 1
            return
        self.jobs[hot.cache_key] = Job([where], hot=hot, dir=self.jobs_dir / key_hash(hot.cache_key),
                                       marks={"msg": time.time()})

    def _advance(self, now: float) -> None:
        """Move every job that can move one step on.

        Download slots (``fetch_max_concurrent`` overall, ``fetch_max_per_host`` per origin host)
        bound jobs in aria2c (add, running). Pre-flights run up to one slot's worth ahead of them
        (preflight, ready; the same bounds again), so a freed slot is refilled at once with a job
        whose pre-flight has answered, like aria2c's own queue does; every download ready in one
        pass goes to aria2c in one ``system.multicall``."""
        s = self.settings
        active = Counter(j.hot.host for j in self.jobs.values() if j.state in ("add", "running"))
        # aria2c runs fetch_max_concurrent downloads (its max-concurrent-downloads) and starts the
        # next of its own queue the moment one ends, as `aria2c -i list` does: as many again wait
        # there. It starts them in order whatever their host, so a host may have more in aria2c
        # than its per-host bound only when that bound is not below the overall one.
        slots = 2 * s.fetch_max_concurrent - sum(active.values())
        per_host = s.fetch_max_per_host if s.fetch_max_per_host < s.fetch_max_concurrent else slots + sum(
            active.values())
        preparing = Counter(j.hot.host for j in self.jobs.values() if j.state in ("preflight", "ready"))
        ahead = s.fetch_max_concurrent - sum(preparing.values())
        paused = self.control is not None and self.control.state.prefetch_paused
        if not paused:
            self._told_paused.clear()
        to_add: list[Job] = []
        for key, job in list(self.jobs.items()):
            if job.not_before > now:
                continue
            if job.state == "check":
                self._check(key, job)
            if job.state == "offpeak":  # its window is open now: ask the origin again, then download
                job.state = "queued"
            if job.state in ("queued", "ready") and paused:
                if key not in self._told_paused:  # once per pause: the console shows why it waits
                    self._told_paused.add(key)
                    self._progress(job, "queued", error="prefetch paused")
                continue
            host = job.hot.host
            if job.state == "ready" and slots > 0 and active[host] < per_host:
                preparing[host] -= 1
                ahead += 1
                if time.monotonic() - job.ready_at > PREFLIGHT_FRESH_S:
                    job.state = "queued"  # waited long for its slot: ask the origin again first
                else:
                    slots -= 1
                    active[host] += 1
                    job.state = "add"
                    if not job.started:
                        self._progress(job, "running")
            if job.state == "queued" and ahead > 0 and preparing[host] < s.fetch_max_per_host:
                ahead -= 1
                preparing[host] += 1
                job.state = "preflight"
                job.marks.setdefault("pf", time.time())
                self._spawn_async(key, "preflight", self._preflight_work(job.hot.url))
            if job.state == "add":
                to_add.append(job)
        if to_add and self.aria2_ok:
            self._add_all(to_add)

    def _check(self, key: str, job: Job) -> None:
        now = time.time()
        try:
            record = self.catalog.get_admission(key)
            why = admission.verdict(record, job.hot.admission, now)
            existing = None if why else self.catalog.get(key)
            on_disk = existing is not None and existing.state == "cached" and (self.root / existing.path).exists()
            if not why and not on_disk:
                job.record = admission.taken_on(record, key, job.hot.admission, now)
                self.catalog.put_admission(job.record)
        except CatalogUnavailable as exc:
            self._delay(job, f"catalog unavailable: {exc}")
            return
        if why == "duplicate-admission":
            # the same admission re-sent (streams restarted before committing) and answered
            # already, whatever became of it (cached, failed, evicted since): never a second download
            self.counters[why] += 1
            job.state = "produce"
            self._flush_outbox(key, job)
            return
        if why and record is not None:  # failed-backoff: answered as failed, streams backs off too
            self.counters[why] += 1
            self.counters["failed"] += 1  # an admission answered as failed, like any other failure
            event = CacheEvent(cache_key=key, state="failed", url=job.hot.url, host=job.hot.host,
                               node=self.settings.node_name, ts=now, refused=record.reason.startswith(QUOTA_REFUSED),
                               error=(f"not fetched again for {record.retry_after - now:.0f} s after {record.failures}"
                                      f" failed fetches: {record.reason}")[:500])
            job.outbox.append((self.settings.topic(contract.CACHE_EVENTS), key.encode(), contract.encode(event)))
            job.state = "produce"
            self._flush_outbox(key, job)
            return
        if on_disk and existing is not None:
            # announce it again: the event may be what an earlier run could not get acknowledged
            self.counters["already-cached"] += 1
            event = CacheEvent(cache_key=key, state="cached", url=existing.url, host=existing.host,
                               path=existing.path, size=existing.size, sha256=existing.sha256, etag=existing.etag,
                               last_modified=existing.last_modified, content_type=existing.content_type,
                               node=self.settings.node_name, ts=existing.fetched_at, source="fetch")
            job.outbox.append((self.settings.topic(contract.CACHE_EVENTS), key.encode(), contract.encode(event)))
            job.state = "produce"
            self._flush_outbox(key, job)
            return
        job.state = "queued"
        self._progress(job, "queued")

    def _delay(self, job: Job, why: str) -> None:
        """A dependency is down: try this step again after a back-off (no attempt used up)."""
        job.delays += 1
        self._degraded(why.split(":")[0].split()[0], why)
        job.not_before = time.monotonic() + backoff(job.delays, 0.5, cap=10.0)
        self.counters["delays"] += 1
        log.warning("%s: %s; retrying", job.key, why)

    # -- workers ----------------------------------------------------------------------------
    def _spawn(self, key: str, kind: str, fn: Callable[..., Any], *args: Any) -> None:
        """Blocking work (hashing and storing, revalidation) off the loop, on a daemon thread so a
        stop never waits for it."""

        def work() -> None:
            try:
                result: Any = fn(*args)
            except Exception as exc:  # handed back to the loop, which decides
                result = exc
            self.results.put((key, kind, result))

        self._workers += 1
        threading.Thread(target=work, name=f"fetch-{kind}", daemon=True).start()

    def _run_aio(self) -> None:
        asyncio.set_event_loop(self.aio)
        try:
            self.aio.run_forever()
        finally:
            drain_and_close(self.aio)  # pre-flights still out are cancelled: their jobs come again

    def _stop_aio(self) -> None:
        with contextlib.suppress(RuntimeError):  # closed already
            self.aio.call_soon_threadsafe(self.aio.stop)
        if self._aio_thread.is_alive():
            self._aio_thread.join(5)

    def _spawn_async(self, key: str, kind: str, work: Coroutine[Any, Any, Any]) -> None:
        """A coroutine on the asyncio thread; its result (or exception) reaches the loop like a
        worker thread's."""

        def done(fut: Any) -> None:
            if not fut.cancelled():  # (cancelled: the fetcher is stopping)
                self.results.put((key, kind, fut.exception() or fut.result()))

        self._workers += 1
        asyncio.run_coroutine_threadsafe(work, self.aio).add_done_callback(done)

    def _resolve(self, host: str) -> str:
        """Upstream resolver, then the address policy (for every hop and every revalidation)."""
        s = self.settings
        try:  # an address literal needs no resolver (and no event loop of its own)
            address = str(ipaddress.ip_address(host.strip("[]")))
        except ValueError:
            address = resolve_origin(self.resolver, host, True)
        return check_origin_address(address, s.allow_private_origins, s.origin_allow_networks)

    def _preflight_work(self, url: str) -> Coroutine[Any, Any, Preflight]:
        s = self.settings
        return walk(url, self._check_host, max_hops=s.fetch_max_redirects + 1, timeout=10.0,
                    source=s.outbound_address)

    # -- revalidation (coherence with the origin) -------------------------------------------
    def _revalidate_due(self) -> None:
        """Start conditional requests for stale objects, up to ``revalidate_concurrent`` at once
        (objects being fetched right now are left alone)."""
        s = self.settings
        room = s.revalidate_concurrent - len(self.revalidating)
        if room <= 0:
            return
        try:
            due = self.catalog.due(time.time(), s.revalidate_min_s, room + len(self.revalidating) + len(self.jobs))
        except CatalogUnavailable as exc:
            self._degraded("catalog", str(exc))
            return
        for entry in due:
            if room <= 0:
                break
            if entry.cache_key in self.revalidating or entry.cache_key in self.jobs:
                continue
            room -= 1
            self.revalidating.add(entry.cache_key)
            self._spawn(entry.cache_key, "revalidate", functools.partial(
                revalidate, stale_grace_s=s.revalidate_stale_grace_s, source=s.outbound_address),
                entry, self.store, self._resolve)

    def _revalidated(self, key: str, result: Revalidated | Exception) -> None:
        self.revalidating.discard(key)
        if isinstance(result, Exception):  # the catalog went away mid-check, ...: asked again later
            self.counters["revalidate.failed"] += 1
            log.warning("revalidation of %s failed: %s", key, result)
            return
        self.counters["revalidate." + result.outcome] += 1
        if result.outcome != "fresh":
            log.info("revalidated %s: %s%s", key, result.outcome, f" ({result.detail})" if result.detail else "")
        if not result.events:
            return
        owed_key = f"\0revalidate\0{key}"
        owed = self.owed.setdefault(owed_key, Owed())
        topic = self.settings.topic(contract.CACHE_EVENTS)
        owed.outbox += [(topic, e.cache_key.encode(), contract.encode(e)) for e in result.events]
        self._flush_outbox(owed_key, owed)

    async def _check_host(self, host: str) -> str:
        """Each pre-flight hop's and (in-process) policy proxy's check of a host: resolved
        upstream (address literals as they are), then the address policy."""
        s = self.settings
        address = await resolve_origin_async(self.resolver, host, True)
        return check_origin_address(address, s.allow_private_origins, s.origin_allow_networks)

    def _drain_workers(self) -> None:
        while True:
            try:
                key, kind, result = self.results.get_nowait()
            except queue.Empty:
                return
            self._workers -= 1
            if kind == "revalidate":
                self._revalidated(key, result)
                continue
            job = self.jobs.get(key)
            if job is None:
                continue
            if kind == "preflight":
                self._preflight_done(key, job, result)
            elif kind == "store":
                self._store_done(key, job, result)

    def _preflight_done(self, key: str, job: Job, result: Preflight | Exception) -> None:
        if isinstance(result, (HopRefused, ForbiddenAddress, BadUrl)):
            self._fail(key, job, PERMANENT + str(result))
            return
        if isinstance(result, (ResolveError, OSError, ValueError)):
            self._retry(key, job, f"pre-flight: {result}")
            return
        if isinstance(result, Exception):
            self._fail(key, job, f"pre-flight: {result!r}")
            return
        reason = judge(result, self.store.quota.object_cap())
        if reason:
            # the cap's refusal when nothing else would refuse it (judge without a cap)
            over_cap = result.length is not None and not judge(result, 1 << 62)
            self._fail(key, job, PERMANENT + reason, refused_size=result.length if over_cap else None)
            return
        wait = budget.must_wait(result.length, time.time(), self.settings.fetch_large_object_bytes, self.offpeak)
        if wait > 0:  # a large object outside the off-peak hours: waits (no slot held), asked again then
            job.state, job.not_before = "offpeak", time.monotonic() + wait
            self.counters["offpeak-waits"] += 1
            self._progress(job, "queued", total=result.length or 0,
                           error=f"waiting {wait:.0f} s for the off-peak hours {self.settings.fetch_offpeak_hours} UTC")
            return
        job.pre = result
        job.marks.setdefault("ready", time.time())
        job.state, job.ready_at = "ready", time.monotonic()  # _advance (next in the loop) hands it to aria2c
        job.dir.mkdir(parents=True, exist_ok=True)
        (job.dir / "job.json").write_bytes(orjson.dumps({"url": job.hot.url, "key": key, "chain": result.chain}))

    # -- aria2 ------------------------------------------------------------------------------
    def _connect_aria2(self) -> None:
        """(Re)connect: set the global options we rely on, and learn aria2's own downloads so a
        restarted fetcher adopts them instead of adding the same files again."""
        s = self.settings
        try:
            self.aria2.change_global_option({
                "max-concurrent-downloads": str(s.fetch_max_concurrent),
                "max-overall-download-limit": str(s.fetch_max_overall_bps),
            })
            known: dict[str, dict[str, Any]] = {}
            for d in (self.aria2.tell_active(keys=STATUS_KEYS) + self.aria2.tell_waiting(0, 1000, keys=STATUS_KEYS)
                      + self.aria2.tell_stopped(0, 1000, keys=STATUS_KEYS)):
                if str(d.get("dir", "")).startswith(str(self.jobs_dir)):
                    known[str(d["dir"])] = d
        except ARIA2_ERRORS as exc:
            self.aria2_retry_at = time.monotonic() + 2.0
            self._degraded("aria2", f"unreachable: {exc}")
            if self.counters["aria2-down"] % 10 == 0:
                log.warning("aria2c unreachable (%s); retrying", exc)
            self.counters["aria2-down"] += 1
            return
        self.aria2_ok = True
        self._health_ok("aria2")
        for job in self.jobs.values():
            if job.state != "running" or not job.gid:
                continue
            self.by_gid.pop(job.gid, None)
            again = known.pop(str(job.dir), None)
            if again is not None and again.get("status") in ("active", "waiting", "paused", "complete"):
                job.gid = str(again["gid"])  # aria2 restarted from its session: the same download
                self.by_gid[job.gid] = job.key
                self.notified.put(job.gid)
            else:  # aria2 forgot it (killed before saving its session): add it again, it resumes
                job.gid, job.state = "", "add"
                if again is not None:
                    known[str(job.dir)] = again
        self.aria2_known = known
        log.info("aria2c connected; %d downloads of ours already known to it", len(known))

    def _aria2_lost(self, exc: BaseException) -> None:
        if self.aria2_ok:
            log.warning("lost aria2c: %s; waiting for it", exc)
            self._degraded("aria2", str(exc))
        self.aria2_ok = False
        self.aria2_retry_at = time.monotonic() + 1.0

    def _add_all(self, jobs: list[Job]) -> None:
        """Hand jobs (state add) to aria2c: a download aria2c already has for a job (after a restart
        of the fetcher) is adopted, never added twice; all others go in ONE ``system.multicall`` of
        ``aria2.addUri`` (one RPC round trip for a burst of hot URLs, not one each)."""
        fresh: list[Job] = []
        for job in jobs:
            known = self.aria2_known.pop(str(job.dir), None)
            if known is None:
                fresh.append(job)
                continue
            try:
                if known.get("status") in ("active", "waiting", "paused", "complete"):
                    self._adopt(job, known)
                    continue
                # stopped with an error: drop the result, resume on the same files
                with contextlib.suppress(aria2p.ClientException):
                    self.aria2.remove_download_result(str(known["gid"]))
            except ARIA2_ERRORS as exc:
                self.aria2_known[str(job.dir)] = known  # asked again after the reconnect
                self._aria2_lost(exc)
                return
            fresh.append(job)
        if not fresh:
            return
        calls = [{"methodName": "aria2.addUri", "params": [[job.pre.pinned], self._download_options(job)]}
                 for job in fresh if job.pre is not None]
        for job in fresh:
            job.marks.setdefault("add", time.time())
        try:
            answers = self.aria2.multicall(calls)
        except aria2p.ClientException as exc:  # the whole call refused (it is not one we send wrong)
            for job in fresh:
                self._retry(job.key, job, f"aria2 refused the download: {exc}")
            return
        except ARIA2_ERRORS as exc:
            # some may have been added before the answer was lost: the reconnect learns them by
            # their job directory and _add_all adopts them
            self._aria2_lost(exc)
            return
        self.counters["add-calls"] += 1
        for job, answer in zip(fresh, answers, strict=True):
            if isinstance(answer, list) and answer:
                self._running(job, str(answer[0]))
            else:
                why = answer.get("message", answer) if isinstance(answer, dict) else answer
                self._retry(job.key, job, f"aria2 refused the download: {why}")

    def _download_options(self, job: Job) -> dict[str, Any]:
        assert job.pre is not None
        return {
            "dir": str(job.dir), "out": "object", "header": [f"Host: {job.pre.hop.host_header}"],
            "max-tries": "2", "retry-wait": "1", "connect-timeout": "10", "timeout": "30",
            "continue": "true", "allow-overwrite": "false", "auto-file-renaming": "false",
            "remote-time": "true", "user-agent": "heatcache-fetcher",
            **self.proxy.options(job.dir.name),  # rel: every request through the policy proxy
        }

    def _adopt(self, job: Job, known: dict[str, Any]) -> None:
        """Ours from before a restart: take the download on as it is (RPC errors to the caller)."""
        gid = str(known["gid"])
        if known["status"] == "paused":
            self.aria2.unpause(gid)
        wanted = self.proxy.options(job.dir.name)
        # this run's policy proxy if it moved (changing an active download restarts it: rel)
        if known["status"] != "complete" and options_differ(self.aria2.get_option(gid), wanted):
            self.aria2.change_option(gid, wanted)
        self.counters["adopted"] += 1
        log.info("adopted aria2 download %s for %s (%s)", gid, job.key, known["status"])
        self._running(job, gid)
        if known["status"] == "complete":
            self.notified.put(gid)

    def _running(self, job: Job, gid: str) -> None:
        job.gid = gid
        self.by_gid[gid] = job.key
        job.state = "running"
        job.started = job.started or time.monotonic()

    def _listen(self) -> None:
        """aria2's WebSocket notifications, on their own connection; reconnects while aria2c is down."""
        client = self._aria2_client()
        self.aria2_listener = client
        while not self._stopping.is_set():
            try:
                client.listen_to_notifications(on_download_complete=self.completed.put,
                                               on_download_error=self.notified.put,
                                               on_download_stop=self.notified.put, timeout=1, handle_signals=False)
            except Exception as exc:  # a dropped socket of any kind: wait and listen again
                log.debug("notifications: %s", exc)
            self._stopping.wait(1.0)

    def _drain_notifications(self) -> None:
        """Completed downloads go to the store at once; the status of every download aria2 said
        stopped or failed is asked in one ``system.multicall``."""
        while True:
            try:
                done = self.completed.get_nowait()
            except queue.Empty:
                break
            if done in self.by_gid:
                self._status({"gid": done, "status": "complete"})  # (the store checks the file itself)
        gids: list[str] = []
        while True:
            try:
                gid = self.notified.get_nowait()
            except queue.Empty:
                break
            if gid in self.by_gid and gid not in gids:
                gids.append(gid)
        if not gids:
            return
        try:
            answers = self.aria2.multicall([{"methodName": "aria2.tellStatus", "params": [gid, STATUS_KEYS]}
                                            for gid in gids])
        except ARIA2_ERRORS as exc:
            for gid in gids:
                self.notified.put(gid)  # asked again once aria2c answers
            self._aria2_lost(exc)
            return
        for answer in answers:
            if isinstance(answer, list) and answer and isinstance(answer[0], dict):
                self._status(answer[0])
            # a fault: gone (removed by us): the sweep settles it

    def _sweep(self) -> None:
        """Progress for the console, the cap and timeout, and any completion a lost notification missed."""
        running = {j.gid: j for j in self.jobs.values() if j.state == "running" and j.gid}
        if not running or not self.aria2_ok:
            return
        try:
            active = {d["gid"]: d for d in self.aria2.tell_active(keys=STATUS_KEYS)}
            others = sorted(running.keys() - active.keys())  # waiting in aria2's queue, or ended
            if others:
                answers = self.aria2.multicall([{"methodName": "aria2.tellStatus", "params": [gid, STATUS_KEYS]}
                                                for gid in others])
                for answer in answers:
                    if isinstance(answer, list) and answer and isinstance(answer[0], dict):
                        active[str(answer[0].get("gid"))] = answer[0]
        except ARIA2_ERRORS as exc:
            self._aria2_lost(exc)
            return
        for gid, job in running.items():
            status = active.get(gid)
            if status is None:  # aria2 does not know it any more (restarted without its session)
                self.by_gid.pop(gid, None)
                job.gid, job.state = "", "add"
                continue
            self._status(status)

    def _status(self, d: dict[str, Any]) -> None:
        key = self.by_gid.get(str(d.get("gid")))
        job = self.jobs.get(key or "")
        if job is None or job.state != "running" or job.not_before > time.monotonic():
            return
        s = self.settings
        state = d.get("status")
        total, done = int(d.get("totalLength") or 0), int(d.get("completedLength") or 0)
        cap = self.store.quota.object_cap()
        if state == "complete":
            self._finish(job)
        elif state in ("error", "removed"):
            self._forget_gid(job)
            refused = self.proxy.refused(job.dir.name)  # a hop the address policy refused
            if refused:
                self.proxy.forget(job.dir.name)
                self._fail(job.key, job, PERMANENT + f"refused by the address policy: {refused}")
                return
            self._retry(job.key, job, f"aria2: {d.get('errorMessage') or state} (code {d.get('errorCode', '?')})")
        elif total > cap or done > cap:
            self._cancel(job)
            self._fail(job.key, job, PERMANENT + f"body outgrew the cap of {cap} bytes", refused_size=max(total, done))
        elif time.monotonic() - job.started > s.fetch_timeout_s:
            self._cancel(job)
            self._retry(job.key, job, "download timed out")
        else:
            self._progress(job, "running", done, total, float(d.get("downloadSpeed") or 0))

    def _cancel(self, job: Job) -> None:
        with contextlib.suppress(*ARIA2_ERRORS):
            self.aria2.force_remove(job.gid)
        self._forget_gid(job)

    def _forget_gid(self, job: Job) -> None:
        if job.gid:
            self.by_gid.pop(job.gid, None)
            self._forgotten.append(job.gid)  # its result is removed from aria2 by _remove_results
            job.gid = ""

    def _remove_results(self) -> None:
        """Drop the download results of finished/cancelled jobs from aria2c, all in one multicall at
        the end of a loop pass (one RPC each cost 3-40 ms on the loop, between a completion and the
        next download's start). Best effort: a result left behind only lingers in aria2's list."""
        if not self._forgotten or not self.aria2_ok:
            return
        gids, self._forgotten = self._forgotten, []
        with contextlib.suppress(*ARIA2_ERRORS):
            self.aria2.multicall([{"methodName": "aria2.removeDownloadResult", "params": [gid]} for gid in gids])

    # -- finishing --------------------------------------------------------------------------
    def _finish(self, job: Job) -> None:
        job.state = "finish"
        job.marks.setdefault("complete", time.time())
        self._spawn(job.key, "store", self._store_work, job)

    def _store_work(self, job: Job) -> Any:
        assert job.pre is not None
        job.marks.setdefault("store", time.time())
        path = job.dir / "object"
        if not path.exists():
            raise FetchError("aria2 reported completion but wrote no file")
        size = path.stat().st_size
        length = job.pre.length
        if length is not None and size != length:
            raise FetchError(f"downloaded {size} bytes, the pre-flight said {length}")
        modified = http_time(job.pre.headers.get("last-modified", ""))
        if modified is not None and abs(path.stat().st_mtime - modified) > 1:
            raise FetchError("Last-Modified of the download differs from the pre-flight: changed meanwhile")
        h = job.pre.headers
        now = time.time()
        meta = ObjectMeta(job.hot.url, job.hot.host, h.get("etag", ""), h.get("last-modified", ""),
                          h.get("content-type", ""), h.get("cache-control", ""), fresh_until(h, now),
                          heat=job.hot.clients, source="fetch")
        return self.store.commit_file(path, job.key, meta, expected_size=size, now=now)

    def _store_done(self, key: str, job: Job, result: Any) -> None:
        if isinstance(result, CatalogUnavailable):
            job.state = "running"  # the file waits in its job directory; store it when the database is back
            self._delay(job, str(result))
            job.not_before = time.monotonic() + 2.0
            self.notified.put(job.gid)
            return
        if isinstance(result, StoreRefused):
            self._fail(key, job, PERMANENT + result.reason, refused_size=result.size if result.quota else None)
            return
        if isinstance(result, FetchError):
            self._forget_gid(job)
            shutil.rmtree(job.dir, ignore_errors=True)
            self._retry(key, job, str(result))
            return
        if isinstance(result, Exception):
            self._forget_gid(job)
            self._fail(key, job, f"store: {result!r}")
            return
        self._forget_gid(job)
        job.marks.setdefault("stored", time.time())
        shutil.rmtree(job.dir, ignore_errors=True)
        if job.record is not None:
            self._put_admission(admission.succeeded(job.record, time.time()))
        self.counters["fetched"] += 1
        self.counters["fetched-bytes"] += result.event.size
        self.counters["evicted"] += len(result.evicted)
        self._progress(job, "done", result.event.size, result.event.size)
        topic = self.settings.topic(contract.CACHE_EVENTS)
        job.outbox += [(topic, e.cache_key.encode(), contract.encode(e)) for e in result.events]
        job.state = "produce"
        self._flush_outbox(key, job)

    def _put_admission(self, record: Admission) -> None:
        try:
            self.catalog.put_admission(record)
        except CatalogUnavailable as exc:  # only the memory of it is lost; the fetch itself is done
            log.warning("could not record the admission of %s: %s", record.cache_key, exc)

    def _retry(self, key: str, job: Job, reason: str) -> None:
        job.attempt += 1
        if job.attempt > self.settings.fetch_retries:
            self._fail(key, job, f"{reason} (after {job.attempt} attempts)")
            return
        wait = backoff(job.attempt, self.settings.fetch_retry_base_s)
        log.warning("fetch of %s: %s; attempt %d in %.1f s", job.hot.url, reason, job.attempt + 1, wait)
        self.counters["retries"] += 1
        job.state = "queued"
        job.not_before = time.monotonic() + wait

    def _fail(self, key: str, job: Job, reason: str, refused_size: int | None = None) -> None:
        """``refused_size``: the quota refused the object (of that size, 0 if unknown), its
        download did not fail: announced as CacheEvent(failed, refused=True)."""
        permanent = reason.startswith(PERMANENT)
        reason = reason.removeprefix(PERMANENT)
        if refused_size is not None:
            reason = QUOTA_REFUSED + reason
        if job.record is not None:  # remembered across restarts, with its back-off
            self._put_admission(admission.failed(job.record, time.time(), reason, self.failure_backoff, permanent))
        log.warning("fetch of %s failed: %s", job.hot.url, reason)
        self.counters["failed"] += 1
        if job.gid:
            self._cancel(job)
        shutil.rmtree(job.dir, ignore_errors=True)
        event = CacheEvent(cache_key=key, state="failed", url=job.hot.url, host=job.hot.host,
                           node=self.settings.node_name, ts=time.time(), error=reason[:500],
                           size=refused_size or 0, refused=refused_size is not None)
        self._progress(job, "failed", error=event.error)
        job.outbox.append((self.settings.topic(contract.CACHE_EVENTS), key.encode(), contract.encode(event)))
        job.state = "produce"
        self._flush_outbox(key, job)

    # -- producing with acknowledgements ----------------------------------------------------
    def _flush_outbox(self, key: str, job: Owed) -> None:
        while job.outbox:
            topic, k, value = job.outbox.pop(0)
            self._produce(key, topic, k, value)
        if job.deliveries == 0:
            self._complete(key, job)

    def _owed(self, key: str) -> Owed | None:
        return self.jobs.get(key) or self.owed.get(key)

    def _produce(self, job_key: str, topic: str, key: bytes, value: bytes) -> None:
        job = self._owed(job_key)
        if job is None:
            return
        job.deliveries += 1

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            job.deliveries -= 1
            if err is not None:  # not acknowledged (broker away past message.timeout.ms): send it again
                self.counters["redelivered"] += 1
                log.warning("event for %s not acknowledged (%s); producing it again", job_key, err)
                self.reproduce.append((time.monotonic() + 1.0, job_key, topic, key, value))
                job.deliveries += 1  # still owed
                if err.fatal():
                    self._replace_producer()
            elif job.deliveries == 0 and not job.outbox:
                self._complete(job_key, job)

        try:
            self.producer.produce(topic, key=key, value=value, on_delivery=delivered)
        except BufferError:
            job.deliveries -= 1
            job.outbox.append((topic, key, value))
            self.producer.poll(0.1)

    def _retry_produce(self, now: float) -> None:
        due = [r for r in self.reproduce if r[0] <= now]
        if not due:
            return
        self.reproduce = [r for r in self.reproduce if r[0] > now]
        for _at, job_key, topic, key, value in due:
            job = self._owed(job_key)
            if job is None:
                continue
            job.deliveries -= 1
            self._produce(job_key, topic, key, value)

    def _replace_producer(self) -> None:
        log.error("producer failed fatally; replacing it")
        self.producer = self._producer()

    def _complete(self, key: str, job: Owed) -> None:
        """Everything this job produced is acknowledged: its messages' offsets may be stored."""
        job.state = "done"
        if isinstance(job, Job):
            job.marks["acked"] = time.time()
            if self.timelines is not None:
                self.timelines.append((key, job.marks))
        self.jobs.pop(key, None)
        self.owed.pop(key, None)
        for topic, partition, offset in job.offsets:
            self._offset_done(topic, partition, offset)

    def _offset_done(self, topic: str, partition: int, offset: int) -> None:
        commit = self.offsets.done(topic, partition, offset)
        if commit is not None:
            with contextlib.suppress(KafkaException):  # partition revoked meanwhile: it comes again
                self.consumer.store_offsets(offsets=[TopicPartition(topic, partition, commit)])

    def _revoked(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.offsets.forget(tp.topic, tp.partition)

    def _progress(self, job: Job, state: str, done: int = 0, total: int = 0, speed: float = 0.0,
                  error: str = "") -> None:
        """One FetchProgress on `fetch-progress` (the console's progress bars); never blocks."""
        hot = job.hot
        event = FetchProgress(cache_key=hot.cache_key, state=state, url=hot.url, host=hot.host, done_bytes=done,
                              total_bytes=total, speed_bps=speed, ts=time.time(), error=error,
                              node=self.settings.node_name)
        with contextlib.suppress(BufferError):
            self.producer.produce(self.settings.topic(contract.FETCH_PROGRESS), key=hot.cache_key.encode(),
                                  value=contract.encode(event))


def job_dirs(root: Path) -> list[Path]:
    """Job directories left on disk (for operators and tests)."""
    jobs = root / "tmp" / "jobs"
    return sorted(p for p in jobs.iterdir() if p.is_dir()) if jobs.exists() else []

