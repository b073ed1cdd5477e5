"""Grafana dashboards as code, built with the official grafana-foundation-sdk (its typed builders).

Every panel comes from the stages' metric declarations (``heatcache.metrics.ALL_STAGES``): an
overview of the pipeline whose panels exist only when the metrics they read are declared, one row
per stage with a panel per declared metric, and a dashboard on the Kafka data source reading the
`metrics` topic (the snapshot fields of ``StageSpec.fields()``). ``python -m ops.grafana`` writes
the JSON files that k8s/base/monitoring provisions through a ConfigMap; tests/k8s keeps them
current and runs every expression against a real Prometheus scraping a running stack.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as dm

from heatcache.metrics import ALL_STAGES, Metric, StageMetrics, StageSpec

OUT = Path(__file__).resolve().parent.parent / "k8s" / "base" / "monitoring"
PROM = dm.DataSourceRef(type_val="prometheus", uid="${prometheus}")
KAFKA_PLUGIN = "hamedkarbasi93-kafka-datasource"  # the Kafka data source plugin for Grafana
KAFKA = dm.DataSourceRef(type_val=KAFKA_PLUGIN, uid="${kafka}")
RATE = "5m"


# -- the Kafka data source's query (the SDK has no builder for this plugin: a small typed one)
class KafkaQuery(cogvariants.Dataquery):
    """One query of the Kafka data source plugin: stream a topic's JSON records as frames."""

    def __init__(self, ref_id: str, topic: str) -> None:
        self.ref_id = ref_id
        self.topic = topic

    def to_json(self) -> dict[str, object]:
        return {"refId": self.ref_id, "datasource": KAFKA.to_json(), "topicName": self.topic, "partition": 0,
                "withStreaming": True, "autoOffsetReset": "latest", "timestampMode": "message",
                "messageFormat": "json"}


class KafkaQueryBuilder(cogbuilder.Builder[KafkaQuery]):
    def __init__(self, ref_id: str, topic: str) -> None:
        self._q = KafkaQuery(ref_id, topic)

    def build(self) -> KafkaQuery:
        return self._q


@dataclass(frozen=True)
class Curated:
    """An overview panel: PromQL expressions over declared metrics (skipped until they exist)."""

    title: str
    exprs: tuple[tuple[str, str], ...]  # (expr, legend)
    unit: str = "short"
    kind: str = "timeseries"


OVERVIEW: tuple[Curated, ...] = (
    Curated("Requests seen (sniffer)", ((f"sum(rate(heatcache_sniffer_requests_total[{RATE}]))", "requests/s"),),
            "reqps"),
    Curated("Edge answers by cache outcome",
            ((f"sum by (cache) (rate(heatcache_edge_responses_total[{RATE}]))", "{{cache}}"),), "reqps"),
    Curated("Edge hit ratio", ((f"sum(rate(heatcache_edge_responses_total{{cache=\"hit\"}}[{RATE}])) / "
                                f"clamp_min(sum(rate(heatcache_edge_responses_total[{RATE}])), 1e-9)", "hit ratio"),),
            "percentunit"),
    Curated("Bytes stored in-path (edge fills)",
            ((f"sum(rate(heatcache_edge_fill_bytes_total[{RATE}]))", "bytes/s"),), "Bps"),
    Curated("DNS answers by result", ((f"sum by (result) (rate(heatcache_dns_answers_total[{RATE}]))", "{{result}}"),),
            "reqps"),
    Curated("Steered hosts", (("max(heatcache_dns_steered_hosts)", "steered hosts"),), "short", "stat"),
    Curated("Cached objects (edge index)", (("max(heatcache_edge_cached_objects)", "objects"),), "short", "stat"),
    Curated("Sniffer drops by reason",
            ((f"topk(5, sum by (reason) (rate(heatcache_sniffer_dropped_total[{RATE}])))", "{{reason}}"),), "pps"),
    Curated("Events lost before Kafka",
            ((f"sum(rate(heatcache_sniffer_lost_events_total[{RATE}]))", "lost/s"),
             (f"sum(rate(heatcache_sniffer_kernel_drops_total[{RATE}]))", "kernel drops/s")), "pps"),
)


def metric_names(specs: Iterable[StageSpec]) -> set[str]:
    """Every Prometheus series name the stages expose (histograms as their _bucket/_sum/_count)."""
    out = set()
    for spec in specs:
        for m in StageMetrics(spec).spec.metrics:
            out |= {m.name + s for s in ("_bucket", "_sum", "_count")} if m.kind == "histogram" else {m.name}
    return out


_IDENT = re.compile(r"\b(heatcache_[a-z0-9_]+)\b")


def referenced(expr: str) -> set[str]:
    return set(_IDENT.findall(expr))


def metric_expr(m: Metric) -> tuple[str, str, str]:
    """(PromQL, legend, unit) that plots one declared metric."""
    by = f" by ({m.label})" if m.label else ""
    legend = f"{{{{{m.label}}}}}" if m.label else m.name.split("_", 2)[2]
    unit = "bytes" if "bytes" in m.name else "s" if m.name.endswith("_seconds") else "short"
    if m.kind == "counter":
        return f"sum{by} (rate({m.name}[{RATE}]))", legend, "Bps" if unit == "bytes" else "ops"
    if m.kind == "histogram":
        return (f"histogram_quantile(0.99, sum by (le) (rate({m.name}_bucket[{RATE}])))", "p99",
                "s" if m.name.endswith("_seconds") else "short")
    if m.name.endswith("_start_time_seconds"):
        return f"max(time() - {m.name})", "uptime", "s"
    return f"max{by} ({m.name})", legend, unit


def _panel(title: str, exprs: Iterable[tuple[str, str]], unit: str, kind: str = "timeseries",
           description: str = "") -> cogbuilder.Builder[dm.Panel]:
    panel: Any = stat.Panel() if kind == "stat" else timeseries.Panel()
    panel = panel.title(title).datasource(PROM).unit(unit).height(7).span(8 if kind == "timeseries" else 4)
    if description:
        panel = panel.description(description)
    for i, (expr, legend) in enumerate(exprs):
        panel = panel.with_target(prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(chr(65 + i)))
    return panel  # type: ignore[no-any-return]


def _variables(dash: db.Dashboard, kafka: bool) -> db.Dashboard:
    dash = dash.with_variable(db.DatasourceVariable("prometheus").label("Prometheus").type("prometheus"))
    if kafka:
        dash = dash.with_variable(db.DatasourceVariable("kafka").label("Kafka").type(KAFKA_PLUGIN))
    return dash


def pipeline_dashboard(specs: Mapping[str, StageSpec]) -> dict[str, Any]:
    """The whole pipeline on Prometheus: stage health, the overview, then a row per stage."""
    names = metric_names(specs.values())
    dash = _variables(db.Dashboard("heatcache pipeline").uid("heatcache-pipeline").tags(["heatcache"])
                      .refresh("30s").time("now-6h", "now").timezone("browser"), kafka=False)
    dash = dash.with_row(db.Row("Stages"))
    for stage in specs:
        dash = dash.with_panel(_panel(f"{stage} healthy", [(f"min(heatcache_{stage}_healthy)", stage)], "bool",
                                      "stat", f"1 while every {stage} process is healthy (runner health)"))
    dash = dash.with_row(db.Row("Overview"))
    for c in OVERVIEW:
        if all(referenced(e) <= names for e, _ in c.exprs):
            dash = dash.with_panel(_panel(c.title, c.exprs, c.unit, c.kind))
    for stage, spec in specs.items():
        dash = dash.with_row(db.Row(f"{stage}"))
        for m in StageMetrics(spec).spec.metrics:
            expr, legend, unit = metric_expr(m)
            dash = dash.with_panel(_panel(m.name, [(expr, legend)], unit, description=m.help))
    return _json(dash)


def kafka_dashboard(specs: Mapping[str, StageSpec], topic: str = "metrics") -> dict[str, Any]:
    """The `metrics` topic through Grafana's Kafka data source: the latest snapshot of each stage
    (a table of its fixed field set) and its health over time."""
    dash = _variables(db.Dashboard("heatcache metrics topic").uid("heatcache-metrics-topic").tags(["heatcache"])
                      .refresh("10s").time("now-30m", "now"), kafka=True)
    for stage, spec in specs.items():
        fields = StageMetrics(spec).spec.fields()
        only_stage = dm.DataTransformerConfig(id_val="filterByValue", options={
            "type": "include", "match": "all",
            "filters": [{"fieldName": "stage", "config": {"id": "equal", "options": {"value": stage}}}]})
        keep = dm.DataTransformerConfig(id_val="filterFieldsByName", options={"include": {"names": fields}})
        dash = dash.with_row(db.Row(f"{stage} (metrics topic)"))
        dash = dash.with_panel(table.Panel().title(f"{stage}: latest snapshot").datasource(KAFKA).height(8).span(16)
                               .with_target(KafkaQueryBuilder("A", topic))
                               .with_transformation(only_stage).with_transformation(keep)
                               .with_transformation(dm.DataTransformerConfig(
                                   id_val="reduce", options={"reducers": ["lastNotNull"], "mode": "reduceFields"})))
        health = [f for f in fields if f in ("ts", "healthy")]
        dash = dash.with_panel(timeseries.Panel().title(f"{stage}: healthy").datasource(KAFKA).height(8).span(8)
                               .with_target(KafkaQueryBuilder("A", topic)).with_transformation(only_stage)
                               .with_transformation(dm.DataTransformerConfig(
                                   id_val="filterFieldsByName", options={"include": {"names": health}})))
    return _json(dash)


def _json(dash: db.Dashboard) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(dash.build(), cls=JSONEncoder, sort_keys=True))
    for i, panel in enumerate(out.get("panels", []), 1):  # rows and panels: one id each (Grafana links by id)
        panel["id"] = i
    return out


def prometheus_exprs(dashboard: Mapping[str, Any]) -> list[str]:
    """Every PromQL expression of a dashboard's panels (what the Prometheus test runs)."""
    return [t["expr"] for p in dashboard.get("panels", []) for t in p.get("targets", []) if "expr" in t]


def kafka_fields(dashboard: Mapping[str, Any]) -> dict[str, set[str]]:
    """Per stage, the snapshot fields the Kafka panels read (checked against the documented schema)."""
    out: dict[str, set[str]] = {}
    for p in dashboard.get("panels", []):
        stage = ""
        for t in p.get("transformations", []):
            if t["id"] == "filterByValue":
                stage = t["options"]["filters"][0]["config"]["options"]["value"]
            if t["id"] == "filterFieldsByName":
                out.setdefault(stage, set()).update(t["options"]["include"]["names"])
    return out


def dashboards(specs: Mapping[str, StageSpec] | None = None) -> dict[str, dict[str, Any]]:
    specs = ALL_STAGES if specs is None else specs
    return {"heatcache-pipeline.json": pipeline_dashboard(specs),
            "heatcache-metrics-topic.json": kafka_dashboard(specs)}


def render() -> dict[Path, str]:
    return {OUT / name: json.dumps(d, indent=1, sort_keys=True) + "\n" for name, d in dashboards().items()}


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for path, text in render().items():
        path.write_text(text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
