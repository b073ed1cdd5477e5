"""The console's view model: pure aggregations of events into the page's numbers (no I/O)."""

from __future__ import annotations

import pytest

from console.actions import ActionError, parse_action, purge_targets
from console.model import (
    CatalogRow,
    Model,
    Sample,
    cache_view,
    chart_series,
    downloads_view,
    growth,
    heat_view,
    sample_from,
    savings_view,
    snapshot,
    stages_view,
    steering_view,
)
from heatcache.contract import CacheEvent, FetchProgress, HotUrl
from heatcache.control import ControlState, fold_all, make_event

K1, K2, K3 = "http://a.test/1", "http://a.test/2", "http://b.test/3"


def hot(key: str, heat: int, clients: int, ts: float = 100.0) -> HotUrl:
    return HotUrl(key, key, key.split("/")[2], heat, clients, 86400, ts)


def test_stages_up_down_unknown() -> None:
    rows = stages_view({"fetcher": {"stage": "fetcher", "ts": 95.0, "lag": 3, "last_error": "boom"},
                        "sniffer": {"stage": "sniffer", "ts": 10.0}}, now=100.0, stale_s=30, edge_ok=True)
    by = {r["stage"]: r for r in rows}
    assert by["fetcher"]["status"] == "up" and by["fetcher"]["lag"] == 3 and by["fetcher"]["last_error"] == "boom"
    assert by["sniffer"]["status"] == "down" and by["sniffer"]["age_s"] == 90
    assert by["streams"]["status"] == "unknown"
    assert by["edge"]["status"] == "up"  # no snapshot, but its health check answers
    rows = stages_view({"dns": {"ts": 99.0, "health": "degraded", "health_reason": "kafka: down"},
                        "streams": {"ts": 99.0, "consumer_lag_messages": 7}, "streams-top": {"ts": 99.0}}, now=100.0)
    assert [r["lag"] for r in rows if r["stage"] == "streams"] == [7]
    assert "streams-top" not in {r["stage"] for r in rows}
    assert [(r["status"], r["last_error"]) for r in rows if r["stage"] == "dns"] == [("degraded", "kafka: down")]


def test_heat_top_urls_and_hosts() -> None:
    view = heat_view({K1: hot(K1, 5, 2), K2: hot(K2, 9, 3), K3: hot(K3, 1, 1)}, {}, n=2)
    assert [u["cache_key"] for u in view["urls"]] == [K2, K1]
    assert view["hosts"][0] == {"host": "a.test", "heat": 14, "clients": 3, "https_share": None}
    # host heat records (from streams) carry the HTTPS share
    model = Model()
    for part, (requests, tls, clients) in enumerate([(6, 4, 5), (4, 0, 6)]):
        model.apply_host_heat({"host": "v.test", "partition": part, "requests": requests, "tls": tls,
                               "clients": clients})
    model.apply_host_heat({"host": "v.test", "partition": 0, "requests": 6, "tls": 0, "clients": 5})  # newer
    view = heat_view({}, model.host_heat)
    assert view["hosts"] == [{"host": "v.test", "heat": 10, "clients": 6, "https_share": 0.0}]


def test_downloads_running_queued_failed_done() -> None:
    progress = {
        K1: FetchProgress(K1, "running", K1, "a.test", done_bytes=250, total_bytes=1000, speed_bps=250, ts=101),
        K2: FetchProgress(K2, "done", K2, "a.test", done_bytes=10, total_bytes=10, ts=102),
    }
    cache = {K2: CacheEvent(K2, "cached", ts=102.5),
             "http://c.test/x": CacheEvent("http://c.test/x", "failed", url="http://c.test/x", error="HTTP 404", ts=99)}
    view = downloads_view(progress, {K1: hot(K1, 2, 2), K2: hot(K2, 2, 2), K3: hot(K3, 2, 2)}, cache, now=103)
    (run,) = view["running"]
    assert run["percent"] == 25.0 and run["eta_s"] == 3.0
    assert [d["cache_key"] for d in view["done"]] == [K2]
    assert [d["cache_key"] for d in view["queued"]] == [K3]
    assert view["queued"][0]["reason"] == "waiting for the fetcher"
    assert [(d["cache_key"], d["error"]) for d in view["failed"]] == [("http://c.test/x", "HTTP 404")]
    paused = fold_all([make_event("prefetch", "paused")])
    view = downloads_view({}, {K3: hot(K3, 2, 2)}, {}, now=103, control=paused)
    assert view["prefetch_paused"] and view["queued"][0]["reason"] == "prefetch paused"


def test_cache_view_quota_largest_most_hit() -> None:
    rows = [CatalogRow(K1, K1, "a.test", 100, "cached", 5), CatalogRow(K2, K2, "a.test", 300, "cached", 0),
            CatalogRow(K3, K3, "b.test", 999, "purged", 9)]
    view = cache_view(rows, [CacheEvent(K3, "purged", ts=5)], quota_bytes=1000)
    assert view["bytes_used"] == 400 and view["objects"] == 2 and view["used_share"] == 0.4
    assert [r["cache_key"] for r in view["largest"]] == [K2, K1]
    assert [r["cache_key"] for r in view["most_hit"]] == [K1]
    assert view["recent"][0]["state"] == "purged"


def test_growth_survives_counter_resets() -> None:
    assert growth([0, 5, 9]) == 9
    assert growth([10, 12, 3, 4]) == 2 + 3 + 1  # restart at the third sample
    assert growth([7]) == 0


def test_savings_windows_hosts_and_networks() -> None:
    samples = [
        Sample(ts=0, hits=0, misses=0, hit_bytes=0),
        Sample(ts=86000, hits=10, misses=10, hit_bytes=1000, prefetched_bytes=500,
               host_hit_bytes={"a.test": 1000}, host_hits={"a.test": 10}),
        Sample(ts=86200, hits=30, misses=10, hit_bytes=5000, prefetched_bytes=500,
               host_hit_bytes={"a.test": 5000}, host_hits={"a.test": 30}, net_hit_bytes={"dorms": 700}),
        Sample(ts=86400, hits=40, misses=20, hit_bytes=6000, prefetched_bytes=1000,
               host_hit_bytes={"a.test": 5000, "b.test": 1000}, host_hits={"a.test": 30, "b.test": 10},
               net_hit_bytes={"dorms": 900}),
    ]
    view = savings_view(samples, now=86400, networks=["dorms", "library"])
    five = view["windows"]["5m"]  # samples at 86200 and 86400
    assert five["hits"] == 10 and five["misses"] == 10 and five["request_hit_ratio"] == 0.5
    assert five["bytes_saved"] == 1000 and five["prefetched_bytes"] == 500
    assert five["byte_hit_ratio"] == pytest.approx(1000 / 1500) and five["net_saved_bytes"] == 500
    assert five["hosts"] == [{"host": "b.test", "bytes_saved": 1000, "hits": 10}]
    assert five["networks"] == [{"network": "dorms", "bytes_saved": 200}, {"network": "library", "bytes_saved": 0}]
    day = view["windows"]["1d"]
    assert day["hits"] == 40 and day["bytes_saved"] == 6000
    assert [h["host"] for h in day["hosts"]] == ["a.test", "b.test"]
    assert view["total_hits"] == 40 and view["total_bytes_saved"] == 6000
    empty = savings_view(samples[:1], now=0)
    assert empty["windows"]["1h"]["request_hit_ratio"] is None


def test_chart_buckets_increments() -> None:
    samples = [Sample(ts=0, hits=0, hit_bytes=0), Sample(ts=30, hits=2, hit_bytes=200),
               Sample(ts=90, hits=3, hit_bytes=500)]
    series = chart_series(samples, now=120, span_s=120, points=4)
    assert series["bytes_saved"] == [0.0, 200.0, 0.0, 300.0] and sum(series["hits"]) == 3


def test_sample_from_catalog_edge_and_metrics() -> None:
    rows = [CatalogRow(K1, K1, "a.test", 100, "cached", 3), CatalogRow(K3, K3, "b.test", 50, "purged", 2)]
    s = sample_from(rows, {"ok": True, "hits": 5, "misses": 1, "hit_bytes.net.dorms": 70},
                    {"fetcher": {"fetched-bytes": 150}}, now=9, prefetched_bytes=400)
    assert (s.hits, s.misses, s.hit_bytes, s.prefetched_bytes) == (5, 1, 400, 400)
    assert s.host_hit_bytes == {"a.test": 300, "b.test": 100} and s.net_hit_bytes == {"dorms": 70}
    # the runner's metric names work too
    s = sample_from([], {}, {"edge": {"responses_total__hit": 4, "responses_total__miss": 2}}, now=9)
    assert (s.hits, s.misses) == (4, 2)


def test_steering_hosts_kill_switch_and_pins() -> None:
    cache = {K1: CacheEvent(K1, "cached", host="a.test"), K3: CacheEvent(K3, "cached", host="b.test"),
             K2: CacheEvent(K2, "purged", host="a.test")}
    metrics = {"dns": {"bypass_ratio.a.test": 0.25}}
    view = steering_view(cache, fold_all([make_event("host", "never", "b.test")]), {"ok": True}, 5, metrics, 6)
    by = {h["host"]: h for h in view["hosts"]}
    assert by["a.test"]["steered"] and by["a.test"]["bypass_ratio"] == 0.25 and by["a.test"]["objects"] == 1
    assert not by["b.test"]["steered"] and by["b.test"]["pinned"] == "never"
    stopped = steering_view(cache, fold_all([make_event("steering", "stopped")]), {"ok": True}, 5, {}, 6)
    assert stopped["steering_stopped"] and not any(h["steered"] for h in stopped["hosts"])
    down = steering_view(cache, ControlState(), {}, 5, {}, 6)
    assert not down["edge_healthy"] and not any(h["steered"] for h in down["hosts"])


def test_model_folds_events_into_a_snapshot() -> None:
    model = Model()
    model.apply_hot(hot(K1, 2, 2))
    model.apply_progress(FetchProgress(K1, "done", K1, "a.test", done_bytes=100, total_bytes=100, ts=101))
    model.apply_cache_event(CacheEvent(K1, "cached", url=K1, host="a.test", size=100, ts=101))
    model.apply_metrics({"stage": "fetcher", "ts": 100.0})
    model.apply_control(make_event("steering", "stopped", now=100))
    model.catalog = [CatalogRow(K1, K1, "a.test", 100, "cached", 0)]
    model.add_sample(sample_from(model.catalog, {}, model.metrics, 101, model.prefetched_bytes))
    snap = snapshot(model, now=102)
    assert set(snap) == {"ts", "stages", "heat", "downloads", "cache", "savings", "steering"}
    assert snap["steering"]["steering_stopped"] and snap["cache"]["objects"] == 1
    assert snap["downloads"]["done"][0]["cache_key"] == K1 and model.prefetched_bytes == 100


def test_actions_parse_and_purge_targets() -> None:
    assert parse_action({"action": "pin-host", "subject": "a.test", "value": "never"}).kind == "pin-host"
    for bad in ({"action": "rm"}, {"action": "purge-url", "subject": "a.test"}, {"action": "pin-url", "subject": K1,
                "value": "maybe"}, {"action": "prefetch", "value": "stopped"}, "purge", {"action": "purge-host"}):
        with pytest.raises(ActionError):
            parse_action(bad)
    rows = [CatalogRow(K1, K1, "a.test", 1, "cached", 0), CatalogRow(K2, K2, "a.test", 1, "purged", 0),
            CatalogRow(K3, K3, "b.test", 1, "cached", 0)]
    assert purge_targets(parse_action({"action": "purge-host", "subject": "A.test"}), rows) == [K1]
    assert purge_targets(parse_action({"action": "purge-host", "subject": "b.test:80"}), rows) == []
    rows.append(CatalogRow("http://c.test:8080/x", "http://c.test:8080/x", "c.test", 1, "cached", 0))
    assert purge_targets(parse_action({"action": "purge-host", "subject": "c.test:8080"}), rows) == [
        "http://c.test:8080/x"]
    assert purge_targets(parse_action({"action": "purge-prefix", "subject": "http://b.test/"}), rows) == [K3]
    assert purge_targets(parse_action({"action": "purge-url", "subject": K2}), rows) == [K2]
