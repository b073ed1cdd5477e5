"""The one metrics scheme (heatcache/metrics.py): declaration -> Prometheus and flat snapshots."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from heatcache import metrics
from heatcache.metrics import EDGE, StageMetrics, StageSpec, counter, gauge, histogram, registry_for


def test_snapshot_has_every_field_from_the_start() -> None:
    live = StageMetrics(EDGE)
    first = live.snapshot("n1", 1.0, "ok", "")
    assert list(first) == live.spec.fields()
    live.counters.update({"hits": 3, "refused.method": 1, "refused.something-new": 2, "fill.bytes": 10})
    later = live.snapshot("n1", 2.0, "degraded", "broker: down")
    assert list(later) == list(first)
    assert later["responses_total__hit"] == 3 and later["responses_total__miss"] == 0
    assert later["refused_total__method"] == 1 and later["refused_total__other"] == 2
    assert later["fill_bytes_total"] == 10 and later["health_reason"] == "broker: down"
    assert all(isinstance(v, str) for k, v in later.items() if k in ("stage", "node", "health", "health_reason"))
    assert all(isinstance(v, int | float) for k, v in later.items()
               if k not in ("stage", "node", "health", "health_reason"))


def test_prometheus_names_labels_and_histograms() -> None:
    spec = StageSpec("demo", (
        counter("heatcache_demo_responses_total", "r", label="cache", keys={"hits": "hit", "misses": "miss"}),
        gauge("heatcache_demo_objects", "o", "objects"),
        histogram("heatcache_demo_fetch_seconds", "f", "fetch"),
    ))
    live = StageMetrics(spec, Counter({"hits": 2}))
    live.bind("objects", lambda: 7)
    live.observe("fetch", 0.003)
    live.observe("fetch", 2.0)
    text = generate_latest(registry_for(live)).decode()
    assert 'heatcache_demo_responses_total{cache="hit"} 2.0' in text
    assert 'heatcache_demo_responses_total{cache="miss"} 0.0' in text
    assert "heatcache_demo_objects 7.0" in text
    assert 'heatcache_demo_fetch_seconds_bucket{le="0.005"} 1.0' in text
    assert "heatcache_demo_fetch_seconds_count 2.0" in text
    snap = live.snapshot("n", 0.0, "ok", "")
    assert snap["objects"] == 7 and snap["fetch_seconds_count"] == 2 and snap["fetch_seconds_sum"] == 2.003


@pytest.mark.parametrize(
    "bad",
    [
        lambda: counter("heatcache_x_hits", "counters end in _total", "hits"),
        lambda: gauge("heatcache_x_objects_total", "gauges do not", "o"),
        lambda: counter("edge_hits_total", "namespaced", "hits"),
        lambda: StageSpec("x", (counter("heatcache_y_hits_total", "wrong stage", "hits"),)),
    ],
)
def test_declarations_follow_prometheus_conventions(bad: object) -> None:
    with pytest.raises(ValueError):
        bad()  # type: ignore[operator]


def test_docs_name_every_snapshot_field() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "metrics.md").read_text()
    for spec in metrics.ALL_STAGES.values():
        for name in StageMetrics(spec).spec.fields():
            assert f"`{name}`" in doc or name in ("stage", "node", "ts", "health", "health_reason"), (spec.stage, name)
    assert metrics.markdown() in doc, "regenerate docs/metrics.md: python -m heatcache.metrics"
