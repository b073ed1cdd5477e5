"""The replay engine: a trace through the production decision code, one setting at a time.

Nothing here decides what production decides; the engine only moves time forward and keeps
score. Each decision is one of the stages' own pure cores, behind a small adapter:

- admission: ``streams.heat.PartitionHeat`` (fold a batch, HotUrls out; cache events in), with
  the rules ``streams.rules.rules_from_settings`` builds from the setting;
- eviction and quota: ``store``, the cache store's own order (``cachestore.policy.choose_victims``
  over the catalog's hit counts, heat and last activity: :class:`replay.storepolicy.StorePolicy`;
  tests/replay/test_store_equal.py checks the contents against a real ObjectStore), or for
  comparison ``cachestore.policy.POLICIES`` (``heat``: the decayed-frequency model the store's
  simulator uses, ``lru``: its baseline); and ``cachestore.quota.plan_space``;
- in-path fill: ``dns_redirect.hits.may_fill`` on the logged status and size;
- steering: ``dns_redirect.index.CacheIndex.is_steered`` and ``dns_redirect.policy.never_steer``
  (a host is steered while it has a cached object and no override says otherwise).

What happens to one request, in the order production sees it:
1. the client asks; if its host is steered and the object is cached, the edge serves it
   (a local hit: those bytes did not cross the uplink);
2. otherwise it goes to the origin; if the host is steered, the edge is in the path and, when
   fill is on and ``may_fill`` allows, stores the object as it passes (no extra download);
3. when its batch is folded, streams may admit keys; with prefetch on, the fetcher downloads
   each admitted key not cached yet (one extra download of the object: bytes prefetched).

The loop has a compiled twin (replay/_engine.c, with ``StorePolicy``'s): it calls the same
adapters and production cores and keeps only the bookkeeping in C; this module is its reference
(tests/replay/test_compiled.py holds the two to identical results).

Object sizes: the largest whole (status 200) response logged for the key; when the log has no
sizes (captures, the sniffer's own batches), sizes from ``cache-events`` or ``default_size``.
"""

from __future__ import annotations

import gc
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from cachestore.policy import POLICIES, HeatPolicy, LruPolicy, Policy, PolicyParams
from cachestore.quota import Quota, plan_space
from dns_redirect.hits import may_fill
from dns_redirect.index import CacheIndex
from dns_redirect.policy import never_steer
from dns_redirect.ports import key_port
from heatcache.cachekey import key_host
from heatcache.contract import CacheEvent, RequestBatch, RequestEvent
from heatcache.settings import Settings
from replay.storepolicy import StorePolicy
from streams.heat import PartitionHeat
from streams.heat import compiled_available as fold_compiled_available
from streams.rules import CacheView, Rules, rules_from_settings

try:
    from replay import _engine
except ImportError:  # not built (no compiler): the Python loop below does the same, slower
    _engine = None  # type: ignore[assignment]

TLS = "TLS"
_HUGE_DISK = 1 << 62  # replay has no filesystem: only the byte quota limits the cache


@dataclass(frozen=True, slots=True)
class Setting:
    """One point of the grid: the knobs replay varies (everything else from the base settings)."""

    window_s: int = 24 * 3600
    min_clients: int = 2
    min_requests: int = 1
    first_access: bool = False
    quota_bytes: int = 0  # HEATCACHE_CACHE_MAX_BYTES; 0 = no byte quota
    policy: str = "store"  # "store" (what ObjectStore evicts), or cachestore.policy.POLICIES "heat" / "lru"
    half_life_s: float = 4 * 3600.0
    fill: bool = True
    prefetch: bool = True
    admission: str = "streams"  # "streams" (production) or "oracle" (knows the future: a baseline)

    @property
    def name(self) -> str:
        adm = "oracle" if self.admission == "oracle" else (
            "first" if self.first_access else f"{self.min_clients}c{self.min_requests}r/{_dur(self.window_s)}")
        quota = _bytes(self.quota_bytes) if self.quota_bytes else "inf"
        return (f"{adm} {self.policy}@{quota} fill={'on' if self.fill else 'off'} "
                f"prefetch={'on' if self.prefetch else 'off'}")

    def settings(self, base: Settings) -> Settings:
        """The base settings with this setting's knobs: what production would run with."""
        return base.model_copy(update={
            "heat_window_s": self.window_s, "heat_min_clients": self.min_clients,
            "heat_min_requests": self.min_requests, "heat_first_access": self.first_access,
            "heat_step_s": 0 if base.heat_window_s != self.window_s else base.heat_step_s,
            "cache_max_bytes": self.quota_bytes, "cache_half_life_s": self.half_life_s,
            "edge_fill": self.fill,
        })

    def apply_command(self) -> str:
        """How an operator puts this setting in production (docs/tuning.md)."""
        env = [f"HEATCACHE_HEAT_WINDOW_S={self.window_s}", f"HEATCACHE_HEAT_MIN_CLIENTS={self.min_clients}",
               f"HEATCACHE_HEAT_MIN_REQUESTS={self.min_requests}",
               f"HEATCACHE_HEAT_FIRST_ACCESS={'true' if self.first_access else 'false'}",
               f"HEATCACHE_CACHE_MAX_BYTES={self.quota_bytes}", f"HEATCACHE_CACHE_HALF_LIFE_S={self.half_life_s:g}",
               f"HEATCACHE_EDGE_FILL={'true' if self.fill else 'false'}"]
        cmd = " ".join(env) + " heatcache up"
        if not self.prefetch:
            # `up` runs until stopped: the pause is a second command, sent while the stack runs
            # (the switch is kept on the compacted control topic, so it outlives restarts)
            cmd += "\n# then, from another shell while it runs:\nheatcache control prefetch pause"
        return cmd

    @property
    def applicable(self) -> bool:
        """Whether production can run it (the LRU baseline and the oracle are for comparison)."""
        return self.policy == "store" and self.admission == "streams"


def _dur(s: float) -> str:
    return f"{s / 3600:g}h" if s >= 3600 and s % 3600 == 0 else f"{s / 60:g}m" if s % 60 == 0 else f"{s:g}s"


def _bytes(n: int) -> str:
    for unit, size in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


# -- adapters -----------------------------------------------------------------------------------


class Admission(Protocol):
    """What the engine needs from an admission rule."""

    def fold(self, partition: int, events: Sequence[RequestEvent]) -> list[tuple[str, float, int]]:
        """Fold one batch; the (cache key, ts, distinct clients) admitted."""
        ...

    def cache_event(self, partition: int, cache_key: str, state: str) -> None: ...


_NONE: list[tuple[str, float, int]] = []  # never appended to: the "nothing admitted" answer


def compiled_fold(ph: PartitionHeat) -> tuple[Any, list[Any]] | None:
    """``PartitionHeat._fold_compiled``'s own call (``PartitionHeat.fold_call``), for the
    compiled loop to make it without the Python frame (one per batch, and a campus trace's
    batches hold one or two events: the frame's attribute reads were ~8 % of a setting). None
    when ``_fold_compiled`` does more than that call (host heat, operator pins) or the fold is
    not the compiled one: the loop calls ``_fold_compiled`` / ``_fold_reference`` then
    (tests/replay/test_compiled.py holds the results and the partitions' state to the
    reference's, which calls ``PartitionHeat.fold``)."""
    if not ph.compiled or ph.host_heat or ph.pins is not None or not fold_compiled_available():
        return None
    return ph.fold_call()


class StreamsAdmission:
    """streams' PartitionHeat, one per partition, fed offsets as the Faust shell does."""

    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self.parts: dict[int, PartitionHeat] = {}
        self.offsets: Counter[int] = Counter()
        self.emitted: list[tuple[str, float]] = []  # every admission, for comparisons with the worker

    def _part(self, partition: int) -> PartitionHeat:
        ph = self.parts.get(partition)
        if ph is None:
            # host heat is reported, never admitted on: replay leaves it out (same HotUrls)
            ph = self.parts[partition] = PartitionHeat(partition, self.rules, host_heat=False)
        return ph

    def fold(self, partition: int, events: Sequence[RequestEvent]) -> list[tuple[str, float, int]]:
        ph = self.parts.get(partition) or self._part(partition)
        offset = self.offsets[partition]
        self.offsets[partition] = offset + 1
        hot = ph.fold(offset, events).hot
        # the Faust shell writes ph.take_dirty() to its table here; replay keeps the state in memory
        if len(ph.dirty_keys) > 4096:
            ph.dirty_keys.clear()
        if not hot:
            return _NONE
        self.emitted.extend((h.cache_key, h.ts) for h in hot)
        return [(h.cache_key, h.ts, h.clients) for h in hot]

    def cache_event(self, partition: int, cache_key: str, state: str) -> None:
        ph = self.parts.get(partition) or self._part(partition)
        ph.on_cache_event(cache_key, state, ph.watermark)


class OracleAdmission:
    """The oracle prefetcher (a baseline, not production): knows every key's future requests
    and admits a key at a request when at least ``pays`` more requests for it will follow, i.e.
    when the prefetch (one download) is paid back by the hits it will give."""

    def __init__(self, events: Sequence[RequestEvent], pays: int = 2) -> None:
        self.remaining: Counter[str] = Counter(ev.cache_key for ev in events if ev.method != TLS)
        self.pays = pays
        self.done: set[str] = set()

    def fold(self, partition: int, events: Sequence[RequestEvent]) -> list[tuple[str, float, int]]:
        out = []
        for ev in events:
            if ev.method == TLS:
                continue
            key = ev.cache_key
            self.remaining[key] -= 1
            if key not in self.done and self.remaining[key] >= self.pays:
                self.done.add(key)
                out.append((key, ev.ts, 0))
        return out

    def cache_event(self, partition: int, cache_key: str, state: str) -> None:
        if state in ("evicted", "purged", "failed"):
            self.done.discard(cache_key)


def compiled_available() -> bool:
    """Whether the compiled loop (replay._engine) was built and imports."""
    return _engine is not None


def make_policy(setting: Setting, compiled: bool = False) -> Policy:
    if setting.policy == "store":
        params = PolicyParams(half_life_s=setting.half_life_s)  # as cachestore.open_store sets it
        if compiled:
            return _engine.StorePolicy(params.half_life_s, params.new_weight, params.heat_weight,  # type: ignore[no-any-return]
                                       params.size_exponent)
        return StorePolicy(params)
    if setting.policy == "heat":
        return HeatPolicy(PolicyParams(half_life_s=setting.half_life_s))
    if setting.policy == "lru":
        return LruPolicy()
    return POLICIES[setting.policy]()


# -- results ------------------------------------------------------------------------------------


@dataclass
class Result:
    """What one setting did on one trace. Ratios are over requests and bytes requested."""

    setting: str
    requests: int = 0
    bytes_requested: int = 0
    hits: int = 0
    bytes_local: int = 0
    prefetches: int = 0
    bytes_prefetched: int = 0
    fills: int = 0
    bytes_filled: int = 0
    prefetches_never_hit: int = 0
    hosts_steered: int = 0
    hosts_steered_end: int = 0
    evictions: int = 0
    refused: int = 0
    fetch_failures: int = 0  # prefetches of keys whose download failed in production
    tls_events: int = 0
    median_first_hit_s: float = math.nan  # per object: from its first request to its first local hit
    series: list[tuple[float, int, int, int]] = field(default_factory=list)  # (bin start, requested, local, prefetched)
    params: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0
    hot: list[tuple[str, float]] = field(default_factory=list)  # admissions (key, ts), when kept
    cached_at_end: list[str] = field(default_factory=list)

    @property
    def hit_ratio(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    @property
    def byte_hit_ratio(self) -> float:
        return self.bytes_local / self.bytes_requested if self.bytes_requested else 0.0

    @property
    def net_savings(self) -> float:
        """(bytes served locally - bytes prefetched) / bytes requested: the headline figure."""
        return (self.bytes_local - self.bytes_prefetched) / self.bytes_requested if self.bytes_requested else 0.0

    def row(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("series", "hot", "cached_at_end")}
        out.update(hit_ratio=self.hit_ratio, byte_hit_ratio=self.byte_hit_ratio, net_savings=self.net_savings)
        return out


# -- the trace as the engine reads it ---------------------------------------------------------


@contextmanager
def gc_paused() -> Iterator[None]:
    """The garbage collector off for a block that makes millions of objects and no cycles (a
    trace's events, batches, rows; a run's state): each full collection would walk all of them
    again, a quarter to a third of generating, batching and preparing a 1M-request trace."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@dataclass
class Prepared:
    """Batches in delivery order and what every setting needs of them, computed once per trace
    (a grid's worker processes share it by fork: nothing per setting is recomputed)."""

    batches: list[RequestBatch]
    request_bytes: list[list[int]]  # per batch, per event
    object_size: dict[str, int]
    t0: float
    t1: float
    host_of: dict[str, str] = field(default_factory=dict)  # cache key -> heatcache.cachekey.key_host(key)
    first_seen: dict[str, float] = field(default_factory=dict)  # cache key -> ts of its first (non-TLS) request
    batch_ts: list[float] = field(default_factory=list)  # per batch: its first event's ts (for the series)
    failed_fetches: frozenset[str] = frozenset()  # keys whose download failed in production (cache-events)
    # per batch, its requests (TLS events left out) as the engine's loop reads them:
    # (cache key, host, bytes, ts, fill class, key number); made once per trace, not per setting
    rows: list[tuple[tuple[str, str, int, float, int, int], ...]] = field(default_factory=list)
    batch_bytes: list[int] = field(default_factory=list)  # per batch: bytes requested (non-TLS)
    # the distinct inputs of dns_redirect.hits.may_fill in the trace: (method, Range header or
    # None, status, object size); a request's fill class indexes this list
    fill_classes: list[tuple[str, str | None, int, int]] = field(default_factory=list)
    requests: int = 0  # non-TLS events
    bytes_requested: int = 0
    tls_events: int = 0
    # every cache key of the trace, numbered in order of appearance (the compiled loop keeps
    # what it knows per key in arrays indexed by this number, not in dicts)
    keys: list[str] = field(default_factory=list)
    key_ids: dict[str, int] = field(default_factory=dict)
    # max_fill -> the fill rule's answer for every fill class (:func:`answer_fills`; a grid's
    # parent asks once for all its settings, before the workers fork)
    fill_answers: dict[int, list[bool | None]] = field(default_factory=dict)
    # the compiled loop's CacheEvents for the index, 3 per key (cached by a fill, by a fetch;
    # evicted): made by the first run that needs one and kept for the next runs in the process
    # (a grid's worker runs several settings; a key's size, hence its events, is fixed here)
    events: list[CacheEvent | None] = field(default_factory=list)
    # CacheIndex's memo of parsed keys, shared by the runs over this trace (as ``events``)
    parsed_keys: dict[str, tuple[str, tuple[str, int]]] = field(default_factory=dict)


def fill_answer(fill_class: tuple[str, str | None, int, int], max_fill: int) -> bool:
    """The edge's fill rule (dns_redirect.hits.may_fill) on one answer as logged."""
    method, rng, status, size = fill_class
    headers = {"Range": rng} if rng is not None else {}
    return may_fill(method, headers, status, {"Content-Length": str(size)}, max_fill) == ""


def answer_fills(prep: Prepared, max_fill: int) -> None:
    """Ask the fill rule for every fill class of ``prep`` now, for every later run with this
    ``max_fill`` (runs otherwise ask it lazily, once per class and run)."""
    if max_fill not in prep.fill_answers:
        prep.fill_answers[max_fill] = [fill_answer(fc, max_fill) for fc in prep.fill_classes]


def parse_keys(prep: Prepared) -> None:
    """Fill ``prep.parsed_keys`` (the index's memo: ``(key_host(key), key_port(key))``, the host
    from ``prep.host_of``) for every key a run may store, now: a grid's parent does it once
    before the workers fork, instead of each worker's first run (a fifth of that run's
    instructions on a 20k quota trace). At most CacheIndex.PARSED_MAX keys (its bound)."""
    parsed, host_of = prep.parsed_keys, prep.host_of
    room = CacheIndex.PARSED_MAX - len(parsed)
    with gc_paused():  # hundreds of thousands of tuples, no cycles
        for key in prep.first_seen:  # the keys of requests (TLS-only keys are never stored)
            if room <= 0:
                break
            if key not in parsed:
                parsed[key] = (host_of[key], key_port(key))
                room -= 1


def prepare(batches: Sequence[RequestBatch], default_size: int = 1 << 20,
            known_sizes: dict[str, int] | None = None, failed_fetches: Iterable[str] = ()) -> Prepared:
    """Object sizes (largest logged 200, else ``known_sizes`` from cache-events, else the
    default) and each request's bytes (as logged; a request with nothing logged: the object).

    ``failed_fetches``: the fetch outcomes production had, from `cache-events` (keys whose last
    event is ``failed``): replay's prefetch of such a key fails too, and streams is told so."""
    with gc_paused():
        return _prepare(batches, default_size, known_sizes, failed_fetches)


def _prepare(batches: Sequence[RequestBatch], default_size: int, known_sizes: dict[str, int] | None,
             failed_fetches: Iterable[str]) -> Prepared:
    size: dict[str, int] = dict(known_sizes or {})
    logged: dict[str, int] = {}
    for b in batches:
        if b.sizes:
            for ev, n, st in zip(b.events, b.sizes, b.statuses or (0,) * len(b.events), strict=True):
                if (st == 200 or (st == 0 and n)) and n > logged.get(ev.cache_key, 0):
                    logged[ev.cache_key] = n
    size.update(logged)
    per: list[list[int]] = []
    host_of: dict[str, str] = {}
    first_seen: dict[str, float] = {}
    batch_ts: list[float] = []
    all_rows: list[tuple[tuple[str, str, int, float, int, int], ...]] = []
    keys: list[str] = []
    key_ids: dict[str, int] = {}
    batch_bytes: list[int] = []
    classes: dict[tuple[str, str | None, int, int], int] = {}
    requests = total = tls = 0
    t0, t1 = math.inf, -math.inf
    for b in batches:
        row = []
        rows = []
        nbytes = 0
        sizes = b.sizes or (0,) * len(b.events)
        statuses = b.statuses or (0,) * len(b.events)
        batch_ts.append(b.events[0].ts if b.events else (t1 if t1 > -math.inf else 0.0))
        for ev, n, st in zip(b.events, sizes, statuses, strict=True):
            key = ev.cache_key
            osize = size.get(key)
            if osize is None:
                osize = size[key] = default_size
            got = n if (n or st) else osize
            row.append(got)
            host = host_of.get(key)
            if host is None:
                host = host_of[key] = key_host(key)
                key_ids[key] = len(keys)
                keys.append(key)
            if ev.ts < t0:
                t0 = ev.ts
            if ev.ts > t1:
                t1 = ev.ts
            if ev.method == TLS:
                tls += 1
                continue
            if key not in first_seen:
                first_seen[key] = ev.ts
            # what the edge's fill rule is asked for this miss (the logged answer; 200 if unknown)
            whole = got == osize and not ev.range
            fc = (ev.method, ev.range if ev.range or not whole else None, st or 200, osize)
            ci = classes.get(fc)
            if ci is None:
                ci = classes[fc] = len(classes)
            rows.append((key, host, got, ev.ts, ci, key_ids[key]))
            nbytes += got
        requests += len(rows)
        total += nbytes
        per.append(row)
        all_rows.append(tuple(rows))
        batch_bytes.append(nbytes)
    if t0 > t1:
        t0 = t1 = 0.0
    return Prepared(list(batches), per, size, t0, t1, host_of, first_seen, batch_ts, frozenset(failed_fetches),
                    all_rows, batch_bytes, list(classes), requests, total, tls, keys, key_ids)


# -- the engine ---------------------------------------------------------------------------------


def run(prep: Prepared, setting: Setting, base: Settings, bins: int = 48, keep_hot: bool = False,
        admission: Admission | None = None, journal: list[tuple[Any, ...]] | None = None,
        compiled: bool | None = None) -> Result:
    """Replay ``prep`` under ``setting``; see the module doc for what happens to each request.

    ``journal``, when given, receives what the cache store would have been asked, in order:
    ``("fill"|"fetch", key, size, ts, heat)`` per object to store, then ``("refused", key)`` or
    one ``("evicted", key)`` per victim; ``("fetch-failed", key)`` per download that failed in
    production; ``("hit", key, ts)`` per local hit (tests drive a real ObjectStore with it).

    The loop is the hot path of a grid (one pass per setting). What does not depend on the
    setting is in ``prep`` (each request's key, host, bytes and fill class; the totals). The
    steering rule is asked per change, not per request: a host's answer can only change when
    one of its objects is stored or evicted, so ``steer[host]`` is set again right then, and a
    request reads it. The fill rule is asked once per distinct input (``prep.fill_classes``),
    and the cache events handed to the index are made once per key and state.

    ``compiled``: the loop below as replay._engine.loop (and the store policy as
    replay._engine.StorePolicy) runs it, calling the same production code; None = when built
    and the setting is the store's policy without a journal, False = this Python reference,
    True = required (tests/replay/test_compiled.py holds the two to identical results).

    The garbage collector is paused for the run: a run makes millions of objects and no cycles,
    and a full collection walks the whole trace and state each time (a third of the time)."""
    with gc_paused():
        return _run(prep, setting, base, bins, keep_hot, admission, journal, compiled)


def _run(prep: Prepared, setting: Setting, base: Settings, bins: int, keep_hot: bool, admission: Admission | None,
         journal: list[tuple[Any, ...]] | None, compiled: bool | None) -> Result:
    import time

    started = time.process_time()  # CPU time: the per-setting rate holds on a busy machine too
    if compiled and _engine is None:
        raise ImportError("replay._engine is not built (./dev builds it; needs gcc and Python headers)")
    if compiled is None:
        compiled = _engine is not None and journal is None and setting.policy == "store"
    elif compiled and (journal is not None or setting.policy != "store"):
        raise ValueError("the compiled loop runs the store policy without a journal")
    live = setting.settings(base)
    res = Result(setting.name, params=asdict(setting))
    if admission is None:
        if setting.admission == "oracle":
            admission = OracleAdmission([ev for b in prep.batches for ev in b.events])
        else:
            admission = StreamsAdmission(rules_from_settings(live))
    policy = make_policy(setting, compiled)
    quota = Quota(max_bytes=setting.quota_bytes, min_free_bytes=0,
                  max_object_fraction=live.cache_max_object_fraction, max_object_bytes=live.max_object_bytes)
    index = CacheIndex(parsed=prep.parsed_keys)
    cached = index.objects  # what the edge serves hits from: exactly the keys the store holds
    is_steered = index.is_steered
    overrides = live.never_steer_hosts
    max_fill = live.max_object_bytes
    sizes = prep.object_size
    host_of = prep.host_of
    first_seen = prep.first_seen
    span = max(prep.t1 - prep.t0, 1e-9)
    t0, scale = prep.t0, bins / span
    series = [[0, 0, 0] for _ in range(bins)]
    first_hit: list[float] = []
    hit_once: set[str] = set()
    pending_prefetch: set[str] = set()  # prefetched, not hit yet
    steered_ever: set[str] = set()
    # host -> the DNS answers it with the node now (nothing is cached at the start: none is)
    steer: dict[str, bool] = dict.fromkeys(host_of.values(), False)
    never: dict[str, bool] = {}  # host -> never_steer (the operator's overrides do not change)
    fill_ok = prep.fill_answers.get(max_fill) or [None] * len(prep.fill_classes)
    partition_of: dict[str, int] = {}
    cached_events: dict[str, CacheEvent] = {}
    evicted_events: dict[str, CacheEvent] = {}
    counts = {"refused": 0, "evictions": 0, "never_hit": 0}
    cache_event = admission.cache_event
    insert, evict, access = policy.insert, policy.evict, policy.access

    def steered(host: str) -> None:
        # the DNS's rule, asked whenever one of the host's objects comes or goes: steered while
        # the index holds one of its objects and no never-steer override names it
        nv = never.get(host)
        if nv is None:
            nv = never[host] = never_steer(host, overrides)
        steer[host] = is_steered(host) and not nv

    def store(key: str, size: int, ts: float, source: str, heat: int, partition: int) -> bool:
        if journal is not None:
            journal.append((source, key, size, ts, heat))
        plan = plan_space(quota, size, policy.used_bytes, _HUGE_DISK)
        if plan.refused:
            counts["refused"] += 1
            if journal is not None:
                journal.append(("refused", key))
            return False
        if plan.free_bytes:
            for victim in evict(plan.free_bytes, ts):
                counts["evictions"] += 1
                if journal is not None:
                    journal.append(("evicted", victim))
                ev = evicted_events.get(victim)
                if ev is None:
                    ev = evicted_events[victim] = CacheEvent(cache_key=victim, state="evicted")
                index.apply(ev)
                vhost = host_of[victim]
                if steer[vhost]:  # one object fewer can only end a host's steering
                    steered(vhost)
                cache_event(partition_of.get(victim, partition), victim, "evicted")
                if victim in pending_prefetch:
                    pending_prefetch.discard(victim)
                    counts["never_hit"] += 1
        insert(key, size, ts, heat)
        ev = cached_events.get(key)
        if ev is None or ev.size != size or ev.source != source:
            ev = cached_events[key] = CacheEvent(cache_key=key, state="cached", size=size, source=source)
        index.apply(ev)
        host = host_of[key]
        if not steer[host]:  # one object more can only start a host's steering
            steered(host)
            if steer[host]:
                steered_ever.add(host)
        partition_of[key] = partition
        cache_event(partition, key, "cached")
        return True

    hits = bytes_local = prefetches = bytes_prefetched = fills = bytes_filled = fetch_failures = 0
    failed_fetches = prep.failed_fetches
    fill_on, prefetch_on = setting.fill, setting.prefetch
    fill_classes = prep.fill_classes
    fold = admission.fold
    if compiled:
        if len(prep.events) != 3 * len(prep.keys):
            prep.events[:] = [None] * (3 * len(prep.keys))
        (hits, bytes_local, prefetches, bytes_prefetched, fills, bytes_filled, fetch_failures, counts["refused"],
         counts["evictions"], counts["never_hit"]) = _engine.loop({
            "batches": prep.batches, "rows": prep.rows, "batch_ts": prep.batch_ts, "batch_bytes": prep.batch_bytes,
            "series": series, "bins": bins, "t0": float(t0), "scale": float(scale), "policy": policy,
            "streams": isinstance(admission, StreamsAdmission), "admission": admission, "fill_on": fill_on,
            "prefetch_on": prefetch_on, "steer": steer, "host_of": host_of, "sizes": sizes,
            "first_seen": first_seen, "fill_classes": fill_classes, "fill_ok": fill_ok, "events": prep.events,
            "failed_fetches": failed_fetches, "keys": prep.keys, "key_ids": prep.key_ids,
            "quota": quota, "plan_space": plan_space, "huge_disk": _HUGE_DISK,
            "index_apply": index.apply, "cached": cached, "is_steered": is_steered, "never_steer": never_steer,
            "overrides": overrides, "never": never, "CacheEvent": CacheEvent, "may_fill": may_fill,
            "compiled_fold": compiled_fold,
            # the loop does PartitionHeat.on_cache_event itself (a view per store and eviction)
            # only for streams' own classes; tests/replay/test_compiled.py compares the views
            "CacheView": CacheView if type(admission) is StreamsAdmission and all(
                type(ph) is PartitionHeat for ph in admission.parts.values()) else None,
            "max_fill": max_fill, "first_hit": first_hit, "hit_once": hit_once, "pending_prefetch": pending_prefetch,
            "steered_ever": steered_ever})
    for batch, rows, bts, nbytes in () if compiled else zip(prep.batches, prep.rows, prep.batch_ts,
                                                            prep.batch_bytes, strict=True):
        part = batch.bucket
        slot = series[min(bins - 1, int((bts - t0) * scale))]  # a batch spans at most the linger
        slot[0] += nbytes
        local = 0
        for key, host, b, ts, fc, _kid in rows:
            if not steer[host]:
                continue  # the client goes to the origin; the edge never sees it
            if key in cached:
                hits += 1
                local += b
                access(key, ts)
                if journal is not None:
                    journal.append(("hit", key, ts))
                if key in pending_prefetch:
                    pending_prefetch.discard(key)
                if key not in hit_once:
                    hit_once.add(key)
                    first_hit.append(ts - first_seen[key])
            elif fill_on:
                ok = fill_ok[fc]
                if ok is None:  # the edge's fill rule on the answer as logged
                    ok = fill_ok[fc] = fill_answer(fill_classes[fc], max_fill)
                if ok:
                    size = sizes[key]
                    if store(key, size, ts, "fill", 0, part):
                        fills += 1
                        bytes_filled += size
        if local:
            bytes_local += local
            slot[1] += local
        for key, ts, clients in fold(part, batch.events):
            if not prefetch_on or key in cached:
                continue
            if key in failed_fetches:  # production's download of it failed: so does this one
                fetch_failures += 1
                if journal is not None:
                    journal.append(("fetch-failed", key))
                cache_event(part, key, "failed")
                continue
            size = sizes[key]
            if store(key, size, ts, "fetch", clients, part):
                prefetches += 1
                bytes_prefetched += size
                pending_prefetch.add(key)
                series[min(bins - 1, int((ts - t0) * scale))][2] += size
            else:
                cache_event(part, key, "failed")
    res.requests, res.bytes_requested, res.hits, res.bytes_local, res.tls_events = (
        prep.requests, prep.bytes_requested, hits, bytes_local, prep.tls_events)
    res.prefetches, res.bytes_prefetched = prefetches, bytes_prefetched
    res.fills, res.bytes_filled, res.fetch_failures = fills, bytes_filled, fetch_failures
    res.refused, res.evictions = counts["refused"], counts["evictions"]
    res.prefetches_never_hit = counts["never_hit"] + len(pending_prefetch)
    res.hosts_steered = len(steered_ever)
    res.hosts_steered_end = sum(1 for h in index.hosts if not never_steer(h, overrides))
    if first_hit:
        first_hit.sort()
        res.median_first_hit_s = first_hit[len(first_hit) // 2]
    res.series = [(t0 + i * span / bins, s[0], s[1], s[2]) for i, s in enumerate(series)]
    if keep_hot and isinstance(admission, StreamsAdmission):
        res.hot = list(admission.emitted)
    if keep_hot:
        res.cached_at_end = sorted(index.objects)
    res.elapsed_s = time.process_time() - started
    return res
