"""The one metrics scheme: each stage declares its metrics once; Prometheus ``/metrics`` and the
`metrics` topic's snapshots are both derived from that declaration.

A stage keeps a plain ``Counter[str]`` on its hot path (one dict update per event, no locks) and
observes latencies into declared histograms. The declaration maps those counter keys onto
Prometheus metrics with names, units and at most one label with a fixed set of values, e.g.
``{"hits": "hit", "misses": "miss"}`` -> ``heatcache_edge_responses_total{cache="hit"}``.

The snapshot published on `metrics` is one flat JSON object with a fixed field set per stage,
present from the first snapshot: ``stage``, ``node``, ``ts``, ``health``, ``health_reason`` and one
number per series, named ``<metric without heatcache_<stage>_>[__<label value>]``; histograms give
``<name>_count`` and ``<name>_sum``. docs/metrics.md lists every field (a test keeps it true).
"""

from __future__ import annotations

import bisect
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.core import (
    Metric as PromFamily,
)
from prometheus_client.registry import Collector

Kind = Literal["counter", "gauge", "histogram"]
_NAME = re.compile(r"^heatcache_[a-z][a-z0-9_]*$")
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _field_part(value: str) -> str:
    return re.sub(r"[^a-z0-9_]", "_", value.lower())


@dataclass(frozen=True)
class Metric:
    """One Prometheus metric of a stage and where its values come from.

    ``keys`` maps a stage counter key to its label value (one label, named ``label``); with
    ``prefix``, every key ``prefix + v`` for v in ``values`` is a series and any other key with
    that prefix is counted under ``other``. Without a label, ``keys`` holds one key mapped to "".
    """

    name: str
    kind: Kind
    help: str
    keys: Mapping[str, str] = field(default_factory=dict)
    label: str = ""
    prefix: str = ""
    values: tuple[str, ...] = ()
    buckets: tuple[float, ...] = LATENCY_BUCKETS

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"metric name {self.name!r} must be heatcache_<stage>_<what> in snake case")
        if self.kind == "counter" and not self.name.endswith("_total"):
            raise ValueError(f"counter {self.name!r} must end in _total (Prometheus convention)")
        if self.kind != "counter" and self.name.endswith("_total"):
            raise ValueError(f"only counters end in _total: {self.name!r}")
        if bool(self.label) != (bool(self.prefix) or len(self.keys) > 1 or any(self.keys.values())):
            raise ValueError(f"{self.name}: a label needs several series; one series needs no label")
        if self.prefix and self.keys:
            raise ValueError(f"{self.name}: use keys or prefix, not both")

    def series(self) -> tuple[tuple[str, str], ...]:
        """(counter key, label value) of every series, in declaration order."""
        if self.prefix:
            return (*tuple((self.prefix + v, v) for v in self.values), ("", "other"))
        return tuple(self.keys.items())


def counter(name: str, help: str, key: str = "", *, label: str = "", keys: Mapping[str, str] | None = None,
            prefix: str = "", values: Iterable[str] = ()) -> Metric:
    """A counter: ``key`` alone, or a labelled family from ``keys`` or ``prefix`` + ``values``."""
    return Metric(name, "counter", help, keys if keys is not None else ({key: ""} if key else {}), label,
                  prefix, tuple(values))


def gauge(name: str, help: str, key: str = "", *, label: str = "", keys: Mapping[str, str] | None = None) -> Metric:
    """A gauge: the stage sets ``counters[key] = value`` or binds a function (StageMetrics.bind)."""
    return Metric(name, "gauge", help, keys if keys is not None else {key: ""}, label)


def histogram(name: str, help: str, key: str, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> Metric:
    """A histogram the stage feeds with StageMetrics.observe(key, value); seconds for latencies."""
    return Metric(name, "histogram", help, {key: ""}, buckets=buckets)


@dataclass(frozen=True)
class StageSpec:
    """Every metric of one stage (the declaration both outputs derive from)."""

    stage: str
    metrics: tuple[Metric, ...]

    def __post_init__(self) -> None:
        names = [m.name for m in self.metrics]
        if len(names) != len(set(names)):
            raise ValueError(f"{self.stage}: a metric is declared twice")
        prefix = f"heatcache_{self.stage}_"
        for m in self.metrics:
            if not m.name.startswith(prefix):
                raise ValueError(f"{m.name} must start with {prefix}")

    def fields(self) -> list[str]:
        """The snapshot's field names, in order: the fixed field set of this stage."""
        out = ["stage", "node", "ts", "health", "health_reason"]
        for m, short in self._shorts():
            for _key, value in m.series():
                name = short + (f"__{_field_part(value)}" if m.label else "")
                out.extend((name + "_count", name + "_sum") if m.kind == "histogram" else (name,))
        return out

    def _shorts(self) -> Iterator[tuple[Metric, str]]:
        cut = len(f"heatcache_{self.stage}_")
        for m in self.metrics:
            yield m, m.name[cut:]

    def with_metrics(self, *more: Metric) -> StageSpec:
        return StageSpec(self.stage, self.metrics + more)


# Standard metrics every stage has (the runner keeps them).
def _common(stage: str) -> tuple[Metric, ...]:
    return (
        gauge(f"heatcache_{stage}_healthy", "1 while the stage is healthy, 0 while degraded (see health_reason)",
              "healthy"),
        gauge(f"heatcache_{stage}_start_time_seconds", "When the stage process started (Unix time)",
              "start-time"),
    )


# The consumer loop's metrics: stages that consume a topic add these to their spec.
def consumer_metrics(stage: str) -> tuple[Metric, ...]:
    return (
        counter(f"heatcache_{stage}_messages_total", "Consumed messages by outcome", label="result",
                keys={"msg.handled": "handled", "msg.dead-letter": "dead_letter", "msg.retried": "retried"}),
        counter(f"heatcache_{stage}_produce_failures_total",
                "Produced records the broker did not acknowledge (sent again)", "produce.failed"),
        counter(f"heatcache_{stage}_broker_errors_total", "Errors talking to the Kafka broker", "broker.errors"),
    )


class Histogram:
    """Cumulative-bucket histogram without locks (updates happen on one thread per stage)."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1


class StageMetrics:
    """The live values of a stage's declared metrics (``counters`` is what the stage updates)."""

    def __init__(self, spec: StageSpec, counters: Counter[str] | None = None) -> None:
        self.spec = spec.with_metrics(*_common(spec.stage))
        self.counters: Counter[str] = counters if counters is not None else Counter()
        self.histograms = {m.series()[0][0]: Histogram(m.buckets) for m in self.spec.metrics if m.kind == "histogram"}
        self._bound: dict[str, Callable[[], float]] = {}
        self._lock = threading.Lock()
        declared: set[str] = set()
        for m in self.spec.metrics:
            declared.update(k for k, _ in m.series() if k)
        self._declared = frozenset(declared)
        self._prefixes = tuple(m.prefix for m in self.spec.metrics if m.prefix)

    def bind(self, key: str, fn: Callable[[], float]) -> None:
        """A gauge read when sampled (e.g. ``lambda: len(index.objects)``)."""
        self._bound[key] = fn

    def observe(self, key: str, value: float) -> None:
        self.histograms[key].observe(value)

    def values(self) -> dict[str, float]:
        """A consistent copy of the counters with bound gauges evaluated."""
        snap: dict[str, float] = dict(self.counters.copy())
        for key, fn in self._bound.items():
            try:
                snap[key] = float(fn())
            except Exception:
                snap[key] = float("nan")
        return snap

    def undeclared(self, snap: Mapping[str, float] | None = None) -> list[str]:
        """Counter keys the stage used that its declaration does not name (for tests and logs)."""
        snap = self.values() if snap is None else snap
        return sorted(k for k in snap if k not in self._declared and not k.startswith(self._prefixes))

    def _series_values(self, m: Metric, snap: Mapping[str, float]) -> list[tuple[str, float]]:
        if not m.prefix:
            return [(v, snap.get(k, 0)) for k, v in m.series()]
        known = {m.prefix + v for v in m.values}
        other = sum(n for k, n in snap.items() if k.startswith(m.prefix) and k not in known)
        return [(v, snap.get(m.prefix + v, 0)) for v in m.values] + [("other", other)]

    def snapshot(self, node: str, ts: float, health: str, reason: str) -> dict[str, Any]:
        """The flat `metrics` record: every field of StageSpec.fields(), numbers as numbers."""
        snap = self.values()
        out: dict[str, Any] = {"stage": self.spec.stage, "node": node, "ts": ts, "health": health,
                               "health_reason": reason}
        for m, short in self.spec._shorts():
            if m.kind == "histogram":
                h = self.histograms[m.series()[0][0]]
                out[short + "_count"] = h.count
                out[short + "_sum"] = h.total
                continue
            for value, number in self._series_values(m, snap):
                name = short + (f"__{_field_part(value)}" if m.label else "")
                out[name] = number if number == number else None  # NaN is not JSON
        return out

    def collect(self) -> Iterator[PromFamily]:
        """Prometheus families for a scrape."""
        snap = self.values()
        for m in self.spec.metrics:
            labels = [m.label] if m.label else []
            if m.kind == "histogram":
                h = self.histograms[m.series()[0][0]]
                running, buckets = 0, []
                for bound, n in zip((*h.bounds, float("inf")), h.counts, strict=False):
                    running += n
                    buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
                hist = HistogramMetricFamily(m.name, m.help)
                hist.add_metric([], buckets, h.total)
                yield hist
                continue
            family: CounterMetricFamily | GaugeMetricFamily
            if m.kind == "counter":
                family = CounterMetricFamily(m.name, m.help, labels=labels)
            else:
                family = GaugeMetricFamily(m.name, m.help, labels=labels)
            for value, number in self._series_values(m, snap):
                family.add_metric([value] if m.label else [], number)
            yield family


class _Collector(Collector):
    def __init__(self, metrics: StageMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[PromFamily]:
        return self.metrics.collect()


def registry_for(metrics: StageMetrics) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(_Collector(metrics))
    return registry


# -- the stages' declarations (one place: the docs, dashboards and tests read them from here) ----
# A stage that adds a counter key adds it here too; tests/heatcache/test_metrics.py checks that
# docs/metrics.md names every snapshot field.

_SNIFF_DROPS = (
    "bad-sni", "bad-url", "ignored-address", "ignored-rule", "method", "no-payload", "not-client-hello",
    "other-port", "reassembly-full", "reassembly-gap", "head-too-large", "incomplete-head", "oversize",
    "bad-content-length", "bad-header", "bad-ip-header", "bad-ip-length", "bad-ip-version", "bad-target",
    "bad-tcp-header", "bad-version", "ip-fragment", "no-host", "non-ascii", "not-http", "not-ip", "not-tcp",
    "short-ethernet", "short-ip", "short-null", "short-sll", "short-tcp", "short-vlan", "unknown-linktype",
    # sniff (issue 18): TCP order and IP fragments
    "retransmission", "tcp-gap", "out-of-order", "out-of-order-full", "bad-fragment", "fragment-overlap",
    "fragment-timeout", "fragments-full",
)

SNIFFER = StageSpec("sniffer", (
    counter("heatcache_sniffer_packets_total", "Frames read from the capture source", "packets"),
    counter("heatcache_sniffer_requests_total", "HTTP requests and TLS ClientHellos turned into events", "requests"),
    counter("heatcache_sniffer_tls_hosts_total", "TLS ClientHellos with an SNI host", "tls-hosts"),
    counter("heatcache_sniffer_dropped_total", "Frames or requests not published, by reason", label="reason",
            prefix="drop.", values=_SNIFF_DROPS),
    counter("heatcache_sniffer_reassembled_total", "Request heads completed from several segments", "reassembled"),
    counter("heatcache_sniffer_held_total", "Partial request heads held for their next segment", "held"),
    counter("heatcache_sniffer_kernel_drops_total", "Frames the kernel dropped before the sniffer read them",
            "kernel-drops"),
    counter("heatcache_sniffer_batches_total", "RequestBatch messages produced", "batches"),
    counter("heatcache_sniffer_published_events_total", "Events the broker acknowledged", "published"),
    counter("heatcache_sniffer_lost_events_total", "Events whose batch the broker did not acknowledge",
            "produce.lost-events"),
    counter("heatcache_sniffer_produce_errors_total", "Batches whose delivery failed", "produce.errors"),
    counter("heatcache_sniffer_queue_full_total", "Waits for the producer's local queue", "produce.queue-full"),
))

DNS = StageSpec("dns", (
    counter("heatcache_dns_answers_total", "DNS queries by what the server did", label="result",
            keys={"steered": "steered", "forwarded": "forwarded", "refused": "refused",
                  "rate-limited": "rate-limited", "malformed": "malformed", "upstream-failed": "upstream-failed"}),
    counter("heatcache_dns_forward_cache_hits_total", "Forwarded answers served from the answer cache", "cache-hit"),
    counter("heatcache_dns_lane_answers_total", "Steered and cached answers sent by the compiled UDP lane",
            "lane"),
    counter("heatcache_dns_uncacheable_total", "Upstream answers that could not be cached", "uncacheable"),
    counter("heatcache_dns_truncated_total", "UDP answers truncated (TC) to fit the client's size", "truncated"),
    counter("heatcache_dns_send_dropped_total", "UDP answers the socket would not take", "send-dropped"),
    gauge("heatcache_dns_steered_hosts", "Hosts with at least one cached object (steered)", "steered-hosts"),
    counter("heatcache_dns_bad_cache_events_total", "cache-events messages refused (sent to dead-letter)",
            "index.bad-events"),
))

EDGE = StageSpec("edge", (
    counter("heatcache_edge_responses_total", "Edge answers by cache outcome", label="cache",
            keys={"hits": "hit", "misses": "miss"}),
    counter("heatcache_edge_refused_total", "Requests refused, by reason", label="reason", prefix="refused.",
            values=("method", "loop", "bad-request", "not-steered", "internal", "purge-auth")),
    counter("heatcache_edge_miss_failures_total", "Misses that could not be passed through", label="reason",
            keys={"miss.unresolved": "unresolved", "miss.origin-failed": "origin-failed"}),
    counter("heatcache_edge_fills_total", "In-path stores of passed-through misses", label="result",
            keys={"fill.stored": "stored", "fill.failed": "failed", "fill.failed.disk": "failed-disk"}),
    counter("heatcache_edge_fill_skipped_total", "Misses not stored while passing through, by reason",
            label="reason", prefix="fill.skipped.",
            values=("method", "status", "request", "cookie", "cache-control", "encoded", "vary", "size", "short",
                    "quota")),
    counter("heatcache_edge_fill_evictions_total", "Objects evicted to make room for in-path stores", "fill.evicted"),
    counter("heatcache_edge_fill_bytes_total", "Bytes stored in-path", "fill.bytes"),
    counter("heatcache_edge_purged_total", "Objects purged through the purge API", "purged"),
    counter("heatcache_edge_client_gone_total", "Clients that hung up mid-answer", "client-gone"),
    counter("heatcache_edge_collapsed_total", "Misses of a key being filled answered from that fill (collapsed"
            " forwarding), cut when it ended short, answered 304/412 from its validators, or passed through",
            label="result", keys={"collapsed": "followed", "collapse.cut": "cut", "collapse.passed": "passed",
                                  "collapse.conditional": "conditional"}),
    counter("heatcache_edge_front_total", "Hits answered by the front (handed off or deferred)", label="result",
            keys={"front.handed-off": "handed-off", "front.deferred": "deferred"}),
    gauge("heatcache_edge_cached_objects", "Objects in the edge's cache index", "objects"),
    counter("heatcache_edge_bad_cache_events_total", "cache-events messages refused (sent to dead-letter)",
            "index.bad-events"),
    # TLS passthrough (steer): per-host figures are in the health JSON's tls_hosts
    counter("heatcache_edge_tls_connections_total", "TLS connections spliced to their origin by SNI",
            "tls.connections"),
    counter("heatcache_edge_tls_refused_total", "TLS connections refused, by reason", label="reason",
            prefix="tls.refused.", values=("not-steered", "no-sni", "not-hello", "timeout", "internal",
                                           "unresolved", "origin-failed", "loop")),
    counter("heatcache_edge_tls_bytes_total", "Bytes relayed by the TLS passthrough", label="direction",
            keys={"tls.bytes-up": "up", "tls.bytes-down": "down"}),
    # leak detection (steer): per-host ratios are in the `edge-top` record (bypass_ratio.<host>)
    counter("heatcache_edge_bypassed_requests_total",
            "Requests the sniffer saw for steered hosts going to an origin (around the cache node)",
            "bypass.requests"),
    gauge("heatcache_edge_bypass_ratio_max",
          "Highest bypass ratio of a steered host over the window (hosts with enough requests)",
          "bypass.max-ratio"),
    gauge("heatcache_edge_bypass_high_hosts", "Steered hosts whose bypass ratio is above the alert ratio",
          "bypass.high-hosts"),
    counter("heatcache_edge_bypass_bad_batches_total", "requests messages the bypass follower could not decode",
            "bypass.bad-batches"),
    counter("heatcache_edge_bypass_steering_off_total",
            "Sniffer requests for steered hosts captured while steering was stopped (control), not counted as bypass",
            "bypass.steering-off"),
    counter("heatcache_edge_bypass_unattributable_total",
            "Sniffer requests for steered hosts from clients not placeable in the steering trial's networks",
            "bypass.unattributable"),
))

# streams (issue 16): heat per key and host; gauges are set at each flush by the Faust worker
_HOT_REASONS = ("heat", "first-access", "refetch-evicted", "refetch-purged", "retry-failed")
STREAMS = StageSpec("streams", (
    counter("heatcache_streams_events_total", "Request events folded into heat", "events"),
    counter("heatcache_streams_batches_total", "requests messages handled (batches of events)", "batches"),
    counter("heatcache_streams_skipped_batches_total",
            "Messages re-read after a restart that the durable state already held (not counted again)",
            "skipped_batches"),
    counter("heatcache_streams_late_events_total", "Events older than the watermark minus the grace (dropped)",
            "late"),
    counter("heatcache_streams_future_events_total",
            "Events further ahead of the watermark than HEATCACHE_HEAT_MAX_AHEAD_S (refused)", "future"),
    counter("heatcache_streams_hot_urls_total", "HotUrls emitted, by reason", label="reason", prefix="hot.",
            values=_HOT_REASONS),
    counter("heatcache_streams_dead_letter_total", "Undecodable requests messages sent to dead-letter",
            "dead_letter"),
    counter("heatcache_streams_flushes_total", "Durable flushes of the heat state (then offsets commit)", "flushes"),
    counter("heatcache_streams_state_records_total", "Records written to the heat table and its changelog",
            "state_records"),
    counter("heatcache_streams_cache_events_total", "cache-events read (cached, failed, evicted, ...)",
            "cache_events"),
    gauge("heatcache_streams_consumer_lag_messages", "requests messages not yet folded, over the worker's partitions",
          "lag"),
    gauge("heatcache_streams_partitions", "requests partitions this worker owns", "partitions"),
    gauge("heatcache_streams_keys", "Cache keys with heat in memory", "keys"),
    gauge("heatcache_streams_hosts", "Hosts with heat in memory (per partition)", "hosts"),
))

FETCHER = StageSpec("fetcher", (
    counter("heatcache_fetcher_fetches_total", "Hot URLs settled, by result", label="result",
            keys={"fetched": "cached", "failed": "failed", "already-cached": "already_cached"}),
    counter("heatcache_fetcher_fetched_bytes_total", "Bytes of objects fetched and stored", "fetched-bytes"),
    counter("heatcache_fetcher_joined_total", "Hot URLs for an object already being fetched (one download)", "joined"),
    counter("heatcache_fetcher_retries_total", "Download attempts retried after a failure (exponential back-off)",
            "retries"),
    counter("heatcache_fetcher_adopted_total", "aria2 downloads adopted after a restart instead of added again",
            "adopted"),
    counter("heatcache_fetcher_evicted_total", "Objects evicted to make room for fetched ones", "evicted"),
    counter("heatcache_fetcher_dependency_waits_total", "Steps delayed because the catalog or aria2c was away",
            "delays"),
    counter("heatcache_fetcher_aria2_unreachable_total", "Failed attempts to reach aria2c's RPC", "aria2-down"),
    counter("heatcache_fetcher_dead_letters_total", "hot-urls messages sent to dead-letter", "dead-letter"),
    counter("heatcache_fetcher_redelivered_total", "Events produced again after the broker did not acknowledge them",
            "redelivered"),
    counter("heatcache_fetcher_duplicate_admissions_total", "Re-sent hot URLs of a handled admission (dropped)",
            "duplicate-admission"),
    counter("heatcache_fetcher_failed_backoff_total", "Hot URLs of a failed key inside its back-off (answered failed,"
            " not fetched)", "failed-backoff"),
    counter("heatcache_fetcher_revalidations_total", "Conditional requests for stale objects, by outcome",
            label="result", prefix="revalidate.",
            values=("fresh", "changed", "gone", "kept", "evicted", "skipped", "failed")),
    gauge("heatcache_fetcher_jobs", "Hot URLs in progress (queued, downloading, storing or awaiting acks)", "jobs"),
    gauge("heatcache_fetcher_downloads", "Downloads running in aria2c now", "downloads"),
    gauge("heatcache_fetcher_cache_used_bytes", "Bytes of cached objects (catalog)", "cache-used"),
    gauge("heatcache_fetcher_cache_quota_bytes", "HEATCACHE_CACHE_MAX_BYTES (0 = no byte quota)", "cache-quota"),
    gauge("heatcache_fetcher_cache_free_bytes", "Free bytes on the cache's filesystem", "cache-free"),
))

CONSOLE = StageSpec("console", (
    gauge("heatcache_console_live_streams", "Browsers following the live stream", "streams"),
    counter("heatcache_console_actions_total", "Operator actions from the page, by result", label="result",
            keys={"action.ok": "ok", "action.refused": "refused", "action.failed": "failed"}),
    counter("heatcache_console_feed_errors_total", "Records or polls the console could not read", "feed-errors"),
))

ALL_STAGES: dict[str, StageSpec] = {s.stage: s for s in (SNIFFER, DNS, EDGE, FETCHER, CONSOLE)}


def register_stage(spec: StageSpec) -> StageSpec:
    """Add a stage's declaration (streams, fetcher, ... declare theirs in this module too)."""
    ALL_STAGES[spec.stage] = spec
    return spec


register_stage(STREAMS)


def markdown(specs: Iterable[StageSpec] | None = None) -> str:
    """The reference tables of docs/metrics.md (``python -m heatcache.metrics`` prints them)."""
    lines = []
    for spec in specs if specs is not None else ALL_STAGES.values():
        full = StageMetrics(spec).spec
        lines += [f"### {spec.stage}", "", "| Prometheus metric | type | snapshot field(s) | meaning |",
                  "| --- | --- | --- | --- |"]
        for m, short in full._shorts():
            fields = []
            for _key, value in m.series():
                name = short + (f"__{_field_part(value)}" if m.label else "")
                fields += [name + "_count", name + "_sum"] if m.kind == "histogram" else [name]
            label = f" ({m.label}: {', '.join(v for _k, v in m.series())})" if m.label else ""
            name = f"{m.name}{{{m.label}}}" if m.label else m.name
            lines.append(f"| `{name}`{label} | {m.kind} | {', '.join(f'`{f}`' for f in fields)} | {m.help} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())
