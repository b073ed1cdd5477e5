"""The console's view model: pure functions that fold events into the numbers the page and
`heatcache status` show. No I/O, time always passed in; the feed (console/feed.py) does the I/O.

What feeds what:
- `metrics` snapshots (one flat record per stage) -> stages up/down, lag, last error;
  the fetcher's ``fetched-bytes`` -> uplink bytes spent on prefetching.
- `hot-urls` (and host heat when streams publishes it) -> the heat tables.
- `fetch-progress` + `hot-urls` + `cache-events` -> downloads running / queued / failed.
- `cache-events` -> recent cached / evicted / purged, and which hosts are steered.
- the catalog (polled) -> bytes used, objects, largest, most hit, and bytes served per host.
- the edge's health counters (polled) -> hits, misses, edge health.
- `control` -> pins, prefetch pause, steering stop.
Savings windows (5 min, 1 h, 1 day, as Squid's cache manager reports them) are differences of
cumulative counters sampled over time, robust to a stage restarting (a counter that goes down
counts from zero again).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from heatcache.contract import CacheEvent, FetchProgress, HotUrl
from heatcache.control import ControlState, fold
from heatcache.hostheat import merge as merge_host_heat

WINDOWS = (("5m", 300), ("1h", 3600), ("1d", 86400))
STAGE_NAMES = ("streams", "fetcher", "dns", "edge", "sniffer")
RECENT_EVENTS = 50
SAMPLE_KEEP_S = 86400 + 600


@dataclass(frozen=True, slots=True)
class CatalogRow:
    """The catalog fields the console uses (decoupled from the catalog's own row type)."""

    cache_key: str
    url: str
    host: str
    size: int
    state: str
    hits: int
    fetched_at: float = 0.0
    last_hit: float = 0.0


@dataclass(frozen=True, slots=True)
class Sample:
    """Cumulative counters at one moment; windows are differences between two samples."""

    ts: float
    hits: int = 0  # edge hits
    misses: int = 0  # edge misses (passed through to the origin)
    hit_bytes: int = 0  # bytes served from the cache (catalog: hits x size)
    prefetched_bytes: int = 0  # bytes the fetcher downloaded through the uplink
    host_hit_bytes: Mapping[str, int] = field(default_factory=dict)
    host_hits: Mapping[str, int] = field(default_factory=dict)
    net_hit_bytes: Mapping[str, int] = field(default_factory=dict)  # per named client network (edge counters)


@dataclass
class Model:
    """Mutable holder of the latest events; the feed applies, the views read (under its lock)."""

    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage -> latest snapshot
    hot: dict[str, HotUrl] = field(default_factory=dict)
    # host -> partition -> latest HostHeat record (a host's requests spread over partitions)
    host_heat: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    cache: dict[str, CacheEvent] = field(default_factory=dict)  # latest state per key
    recent: deque[CacheEvent] = field(default_factory=lambda: deque(maxlen=RECENT_EVENTS))
    progress: dict[str, FetchProgress] = field(default_factory=dict)
    control: ControlState = field(default_factory=ControlState)
    catalog: list[CatalogRow] = field(default_factory=list)
    edge: dict[str, Any] = field(default_factory=dict)  # the edge's last health answer ({} = unreachable)
    edge_checked: float = 0.0
    samples: deque[Sample] = field(default_factory=deque)
    prefetched_bytes: int = 0  # sum of finished downloads seen on fetch-progress (uplink spent prefetching)

    def apply_metrics(self, record: Mapping[str, Any]) -> None:
        stage = str(record.get("stage", ""))
        if stage:
            self.metrics[stage] = dict(record)

    def apply_hot(self, hot: HotUrl) -> None:
        self.hot[hot.cache_key] = hot

    def apply_host_heat(self, record: Mapping[str, Any]) -> None:
        host = record.get("host")
        part = record.get("partition", 0)
        if isinstance(host, str) and isinstance(part, int):
            self.host_heat.setdefault(host, {})[part] = dict(record)

    def apply_cache_event(self, event: CacheEvent) -> None:
        self.cache[event.cache_key] = event
        self.recent.appendleft(event)

    def forget_cache_key(self, key: str) -> None:
        self.cache.pop(key, None)

    def apply_progress(self, progress: FetchProgress) -> None:
        old = self.progress.get(progress.cache_key)
        if progress.state == "done" and not (old is not None and old.state == "done" and old.ts == progress.ts):
            self.prefetched_bytes += progress.total_bytes or progress.done_bytes
        self.progress[progress.cache_key] = progress
        if len(self.progress) > 2000:  # keep the newest; finished ones are history
            for key in sorted(self.progress, key=lambda k: self.progress[k].ts)[:500]:
                del self.progress[key]

    def apply_control(self, event: Any) -> None:
        self.control = fold(self.control, event)

    def add_sample(self, sample: Sample) -> None:
        self.samples.append(sample)
        while self.samples and sample.ts - self.samples[0].ts > SAMPLE_KEEP_S:
            self.samples.popleft()


# -- stages --------------------------------------------------------------------------------------

def stages_view(metrics: Mapping[str, Mapping[str, Any]], now: float, stale_s: float = 30.0,
                expected: Sequence[str] = STAGE_NAMES, edge_ok: bool = False) -> list[dict[str, Any]]:
    """One row per stage: ``up`` when its last metrics snapshot is younger than ``stale_s`` (or,
    for the edge, when its health check answers), ``down`` when it is older, ``unknown`` when
    the stage never published one."""
    out = []
    extra = sorted(k for k in set(metrics) - set(expected) if not k.endswith("-top"))  # "-top": not a stage
    for stage in [*expected, *extra]:
        rec = metrics.get(stage)
        if rec is None:
            status = "up" if stage == "edge" and edge_ok else "unknown"
            out.append({"stage": stage, "status": status, "up": status == "up", "age_s": None, "lag": None,
                        "last_error": "", "node": ""})
            continue
        ts = _num(rec.get("ts"))
        age = max(0.0, now - ts) if ts else None
        up = (age is not None and age <= stale_s) or (stage == "edge" and edge_ok)
        lag = rec.get("lag", rec.get("consumer_lag_messages", rec.get("consumer_lag")))
        # the runner's scheme: health "ok"/"degraded" with health_reason "dependency: reason; ..."
        degraded = rec.get("health") == "degraded"
        error = str(rec.get("last_error", "") or rec.get("health_reason", "") or "")
        status = "down" if not up else "degraded" if degraded else "up"
        out.append({"stage": stage, "status": status, "up": up, "age_s": age,
                    "lag": lag if isinstance(lag, (int, float)) else None,
                    "last_error": error, "node": str(rec.get("node", ""))})
    return out


# -- heat ----------------------------------------------------------------------------------------

def heat_view(hot: Mapping[str, HotUrl], host_heat: Mapping[str, Mapping[int, Mapping[str, Any]]],
              n: int = 10) -> dict[str, Any]:
    """Top URLs by heat, and top hosts: from streams' host heat (requests and TLS summed over the
    latest record of each partition; clients merged from their sketches) when it
    publishes it, else summed from the hot URLs (without the HTTPS share)."""
    urls = sorted(hot.values(), key=lambda h: (-h.heat, -h.clients, h.cache_key))[:n]
    top_urls = [{"cache_key": h.cache_key, "url": h.url, "host": h.host, "heat": h.heat, "clients": h.clients,
                 "window_s": h.window_s, "ts": h.ts} for h in urls]
    hosts: list[dict[str, Any]] = []
    if host_heat:
        for host, parts in host_heat.items():
            requests = sum(_num(r.get("requests")) for r in parts.values())
            tls = sum(_num(r.get("tls")) for r in parts.values())
            # distinct clients over the partitions: the union of their sketches (streams' records
            # carry one), else the largest partition's count
            clients = merge_host_heat(host, parts.values()).clients
            hosts.append({"host": host, "heat": int(requests), "clients": int(clients),
                          "https_share": tls / requests if requests else None})
    else:
        agg: dict[str, dict[str, Any]] = {}
        for h in hot.values():
            row = agg.setdefault(h.host, {"host": h.host, "heat": 0, "clients": 0, "https_share": None})
            row["heat"] += h.heat
            row["clients"] = max(row["clients"], h.clients)
        hosts = list(agg.values())
    hosts.sort(key=lambda r: (-r["heat"], r["host"]))
    return {"urls": top_urls, "hosts": hosts[:n]}


# -- downloads -----------------------------------------------------------------------------------

def downloads_view(progress: Mapping[str, FetchProgress], hot: Mapping[str, HotUrl],
                   cache: Mapping[str, CacheEvent], now: float, control: ControlState | None = None,
                   n: int = 20) -> dict[str, Any]:
    """Running downloads (progress, speed, ETA), queued ones (hot, nothing happened yet) and
    failed ones with their reasons; plus the last finished."""
    running: list[dict[str, Any]] = []
    done: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for p in progress.values():
        row = {"cache_key": p.cache_key, "url": p.url, "host": p.host, "done_bytes": p.done_bytes,
               "total_bytes": p.total_bytes, "speed_bps": p.speed_bps, "ts": p.ts, "error": p.error,
               "state": p.state, "percent": _percent(p), "eta_s": _eta(p)}
        if p.state == "running":
            running.append(row)
        elif p.state == "queued":
            pass  # listed with the queue below
        elif p.state == "done":
            done.append(row)
        else:
            failed.append(row)
    failed_keys = {r["cache_key"] for r in failed}
    for ev in cache.values():
        if ev.state == "failed" and ev.cache_key not in failed_keys and ev.cache_key not in _active(progress):
            failed.append({"cache_key": ev.cache_key, "url": ev.url, "host": ev.host, "error": ev.error,
                           "ts": ev.ts, "state": "failed", "percent": 0.0, "eta_s": None, "done_bytes": 0,
                           "total_bytes": 0, "speed_bps": 0.0})
    queued: list[dict[str, Any]] = []
    paused = control is not None and control.prefetch_paused
    for h in hot.values():
        prog = progress.get(h.cache_key)
        last = cache.get(h.cache_key)
        if prog is not None and prog.state != "queued" and prog.ts >= h.ts:
            continue
        if last is not None and last.ts >= h.ts:
            continue
        queued.append({"cache_key": h.cache_key, "url": h.url, "host": h.host, "ts": h.ts, "heat": h.heat,
                       "clients": h.clients, "reason": "prefetch paused" if paused else
                       (prog.error if prog is not None and prog.error else "waiting for the fetcher")})
    running.sort(key=lambda r: -r["ts"])
    done.sort(key=lambda r: -r["ts"])
    failed.sort(key=lambda r: -r["ts"])
    queued.sort(key=lambda r: r["ts"])
    return {"running": running[:n], "queued": queued[:n], "failed": failed[:n], "done": done[:n],
            "queued_total": len(queued), "prefetch_paused": paused}


def _active(progress: Mapping[str, FetchProgress]) -> set[str]:
    return {k for k, p in progress.items() if p.state in ("running", "queued")}


def _percent(p: FetchProgress) -> float:
    if p.state == "done":
        return 100.0
    return min(100.0, 100.0 * p.done_bytes / p.total_bytes) if p.total_bytes else 0.0


def _eta(p: FetchProgress) -> float | None:
    if p.state != "running" or not p.total_bytes or p.speed_bps <= 0:
        return None
    return max(0.0, (p.total_bytes - p.done_bytes) / p.speed_bps)


# -- the cache -----------------------------------------------------------------------------------

def cache_view(catalog: Iterable[CatalogRow], recent: Iterable[CacheEvent], quota_bytes: int = 0,
               n: int = 10) -> dict[str, Any]:
    """Bytes used vs the quota, objects, largest and most hit objects, recent events."""
    cached = [r for r in catalog if r.state == "cached"]
    used = sum(r.size for r in cached)
    def row(r: CatalogRow) -> dict[str, Any]:
        return {"cache_key": r.cache_key, "url": r.url, "host": r.host, "size": r.size, "hits": r.hits,
                "last_hit": r.last_hit}

    events = [{"cache_key": e.cache_key, "url": e.url, "host": e.host, "state": e.state, "size": e.size,
               "ts": e.ts, "source": e.source, "error": e.error} for e in recent]
    return {
        "bytes_used": used,
        "quota_bytes": quota_bytes,
        "used_share": used / quota_bytes if quota_bytes else None,
        "objects": len(cached),
        "largest": [row(r) for r in sorted(cached, key=lambda r: (-r.size, r.cache_key))[:n]],
        "most_hit": [row(r) for r in sorted(cached, key=lambda r: (-r.hits, r.cache_key))[:n] if r.hits > 0],
        "recent": events[:n * 2],
        "objects_list": [row(r) for r in sorted(cached, key=lambda r: r.cache_key)][:500],
    }


# -- savings -------------------------------------------------------------------------------------

def sample_from(catalog: Iterable[CatalogRow], edge: Mapping[str, Any], metrics: Mapping[str, Mapping[str, Any]],
                now: float, prefetched_bytes: int = 0) -> Sample:
    """Cumulative counters now: hit bytes per host from the catalog (hits x size), hits and
    misses from the edge, prefetched bytes from finished downloads (or the fetcher's metrics if
    larger), per-network hit bytes from the edge's ``hit_bytes.net.<name>`` counters (when the
    edge publishes them)."""
    host_bytes: dict[str, int] = {}
    host_hits: dict[str, int] = {}
    for r in catalog:
        if r.hits:
            host_bytes[r.host] = host_bytes.get(r.host, 0) + r.hits * r.size
            host_hits[r.host] = host_hits.get(r.host, 0) + r.hits
    edge_counters = dict(metrics.get("edge", {}))
    edge_counters.update(edge)  # the live health answer is newer than the last snapshot
    nets = {k[len("hit_bytes.net."):]: int(_num(v)) for k, v in edge_counters.items()
            if k.startswith("hit_bytes.net.")}
    fetcher = metrics.get("fetcher", metrics.get("fetch", {}))
    hits = edge_counters.get("hits", edge_counters.get("responses_total__hit"))
    misses = edge_counters.get("misses", edge_counters.get("responses_total__miss"))
    fetched = fetcher.get("fetched-bytes", fetcher.get("fetched_bytes_total"))
    # the edge's own count of body bytes served (exact for ranges, immediate); else the catalog's
    served = edge_counters.get("hit_bytes")
    return Sample(ts=now, hits=int(_num(hits)), misses=int(_num(misses)),
                  hit_bytes=int(_num(served)) if served is not None else sum(host_bytes.values()),
                  prefetched_bytes=max(prefetched_bytes, int(_num(fetched))),
                  host_hit_bytes=host_bytes, host_hits=host_hits, net_hit_bytes=nets)


def growth(values: Sequence[float]) -> float:
    """Total increase of a cumulative counter over a series; a drop is a restart (counts from 0)."""
    total = 0.0
    for prev, cur in pairwise(values):
        total += cur - prev if cur >= prev else cur
    return total


def savings_view(samples: Sequence[Sample], now: float, networks: Iterable[str] = (),
                 chart_points: int = 60) -> dict[str, Any]:
    """Request and byte hit ratio, bytes saved, per host and per named network, per window;
    and a chart series (bytes served from the cache per interval over the last hour)."""
    windows: dict[str, Any] = {}
    for label, seconds in WINDOWS:
        span = [s for s in samples if s.ts >= now - seconds]
        if len(span) < 2:
            windows[label] = {"hits": 0, "misses": 0, "request_hit_ratio": None, "bytes_saved": 0,
                              "byte_hit_ratio": None, "prefetched_bytes": 0, "net_saved_bytes": 0,
                              "hosts": [], "networks": [], "covered_s": 0.0}
            continue
        hits = growth([s.hits for s in span])
        misses = growth([s.misses for s in span])
        saved = growth([s.hit_bytes for s in span])
        prefetched = growth([s.prefetched_bytes for s in span])
        hosts = sorted({h for s in span for h in s.host_hit_bytes})
        per_host: list[dict[str, Any]] = []
        for h in hosts:
            host_saved = growth([s.host_hit_bytes.get(h, 0) for s in span])
            if host_saved > 0:
                per_host.append({"host": h, "bytes_saved": int(host_saved),
                                 "hits": int(growth([s.host_hits.get(h, 0) for s in span]))})
        per_host.sort(key=lambda r: -r["bytes_saved"])
        nets = sorted(set(networks) | {n for s in span for n in s.net_hit_bytes})
        per_net = [{"network": n, "bytes_saved": int(growth([s.net_hit_bytes.get(n, 0) for s in span]))}
                   for n in nets]
        windows[label] = {
            "hits": int(hits), "misses": int(misses),
            "request_hit_ratio": hits / (hits + misses) if hits + misses else None,
            "bytes_saved": int(saved),
            # bytes that crossed the uplink for the cache (prefetches) against bytes it served
            "byte_hit_ratio": saved / (saved + prefetched) if saved + prefetched else None,
            "prefetched_bytes": int(prefetched),
            "net_saved_bytes": int(saved - prefetched),
            "hosts": per_host[:10], "networks": per_net, "covered_s": span[-1].ts - span[0].ts,
        }
    return {"windows": windows, "chart": chart_series(samples, now, 3600, chart_points),
            "total_hits": samples[-1].hits if samples else 0,
            "total_bytes_saved": samples[-1].hit_bytes if samples else 0}


def chart_series(samples: Sequence[Sample], now: float, span_s: float, points: int) -> dict[str, list[float]]:
    """Bytes served from the cache and edge hits per bucket over the last ``span_s`` seconds."""
    step = span_s / points
    start = now - span_s
    ts = [start + step * (i + 1) for i in range(points)]
    saved = [0.0] * points
    hits = [0.0] * points
    for prev, cur in pairwise(samples):
        if cur.ts <= start:
            continue
        i = min(points - 1, max(0, int((cur.ts - start) / step)))
        saved[i] += cur.hit_bytes - prev.hit_bytes if cur.hit_bytes >= prev.hit_bytes else cur.hit_bytes
        hits[i] += cur.hits - prev.hits if cur.hits >= prev.hits else cur.hits
    return {"ts": ts, "bytes_saved": saved, "hits": hits}


# -- steering ------------------------------------------------------------------------------------

def steering_view(cache: Mapping[str, CacheEvent], control: ControlState, edge: Mapping[str, Any],
                  edge_checked: float, metrics: Mapping[str, Mapping[str, Any]], now: float,
                  never_steer: Iterable[str] = ()) -> dict[str, Any]:
    """Steered hosts (a cached object and not excluded), edge health, bypass ratio per host
    (from the DNS/sniffer metrics' ``bypass_ratio.<host>`` fields when published)."""
    never = {h.lower() for h in never_steer}
    objects: dict[str, int] = {}
    for ev in cache.values():
        if ev.state == "cached" and ev.host:
            objects[ev.host.lower()] = objects.get(ev.host.lower(), 0) + 1
    bypass: dict[str, float] = {}
    for rec in metrics.values():
        for k, v in rec.items():
            if k.startswith("bypass_ratio.") and isinstance(v, (int, float)):
                bypass[k[len("bypass_ratio."):]] = float(v)
    healthy = bool(edge.get("ok"))
    hosts = []
    for host in sorted(set(objects) | set(bypass)):
        excluded = any(host == n or host.endswith("." + n) for n in never) or control.pin("", host) == "never"
        hosts.append({"host": host, "objects": objects.get(host, 0),
                      "steered": objects.get(host, 0) > 0 and healthy and not excluded
                      and not control.steering_stopped,
                      "bypass_ratio": bypass.get(host), "pinned": control.pin("", host)})
    return {"steering_stopped": control.steering_stopped, "edge_healthy": healthy,
            "edge_checked_age_s": now - edge_checked if edge_checked else None,
            "hosts": hosts, "control": control.as_dict()}


# -- the whole page ------------------------------------------------------------------------------

def snapshot(model: Model, now: float, quota_bytes: int = 0, networks: Iterable[str] = (),
             never_steer: Iterable[str] = (), stale_s: float = 30.0) -> dict[str, Any]:
    """Everything the page and `heatcache status --json` show, as plain data."""
    return {
        "ts": now,
        "stages": stages_view(model.metrics, now, stale_s, edge_ok=bool(model.edge.get("ok"))),
        "heat": heat_view(model.hot, model.host_heat),
        "downloads": downloads_view(model.progress, model.hot, model.cache, now, model.control),
        "cache": cache_view(model.catalog, model.recent, quota_bytes),
        "savings": savings_view(list(model.samples), now, networks),
        "steering": steering_view(model.cache, model.control, model.edge, model.edge_checked, model.metrics, now,
                                  never_steer),
    }


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0
