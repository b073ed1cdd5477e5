"""Dashboards and alert rules, offline: generated files current, promtool's checks and unit tests,
expressions only on declared metrics, Kafka panels only on documented snapshot fields, and the
ConfigMaps that provision them."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from heatcache.metrics import ALL_STAGES, StageMetrics
from ops import grafana

MON = grafana.OUT
RULES = MON / "heatcache-alerts.yaml"
RULE_TESTS = MON / "heatcache-alerts.test.yaml"


def promtool(*args: str) -> str:
    binary = shutil.which("promtool")
    assert binary is not None, "promtool is needed: ./dev installs Debian's prometheus"
    proc = subprocess.run([binary, *args], capture_output=True, text=True, cwd=MON, check=False, timeout=120)
    assert proc.returncode == 0, f"promtool {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_promtool_checks_the_rules_and_runs_their_unit_tests() -> None:
    assert "SUCCESS" in promtool("check", "rules", RULES.name)
    assert "SUCCESS" in promtool("test", "rules", RULE_TESTS.name)


def test_every_alert_has_a_unit_test_firing_it_and_a_runbook() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {a["alertname"] for t in tests for a in t["alert_rule_test"] if a["exp_alerts"]}
    quiet = {a["alertname"] for t in tests for a in t["alert_rule_test"] if not a["exp_alerts"]}
    names = {r["alert"] for r in rules()}
    assert names == fired == quiet, "each alert needs a firing and a not-firing case"
    ops_doc = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text().lower()
    for r in rules():
        anchor = r["annotations"]["runbook"].split("#")[1]
        assert anchor == r["alert"].lower() and f"### {r['alert'].lower()}" in ops_doc, r["alert"]


def test_expressions_read_only_declared_metrics() -> None:
    declared = grafana.metric_names(ALL_STAGES.values())
    for r in rules():
        unknown = grafana.referenced(r["expr"]) - declared
        # a regex over names (StageDegraded) must match declared names too
        assert not unknown, f"{r['alert']} reads undeclared {unknown}"
    assert any(n.endswith("_healthy") for n in declared)
    for d in grafana.dashboards().values():
        for expr in grafana.prometheus_exprs(d):
            assert grafana.referenced(expr) <= declared, expr


def test_dashboard_files_are_current_and_provisioned() -> None:
    for path, text in grafana.render().items():
        assert path.read_text() == text, f"{path} is stale: run `python -m ops.grafana`"
    kustomization = yaml.safe_load((MON.parent / "kustomization.yaml").read_text())
    generated = {g["name"]: g for g in kustomization["configMapGenerator"]}
    files = {Path(f).name for f in generated["heatcache-dashboards"]["files"]}
    assert files == {p.name for p in grafana.render()}
    assert generated["heatcache-dashboards"]["options"]["labels"]["grafana_dashboard"] == "1"
    assert {Path(f).name for f in generated["heatcache-alerts"]["files"]} == {RULES.name}


def test_dashboards_are_well_formed() -> None:
    boards = grafana.dashboards()
    for name, d in boards.items():
        assert d["uid"] and d["title"] and d["panels"], name
        ids = [p["id"] for p in d["panels"] if "id" in p]
        assert len(ids) == len(set(ids)), name
        for p in d["panels"]:
            assert p["type"] in {"row", "timeseries", "stat", "table"}, p
            if p["type"] != "row":
                assert p["datasource"]["uid"] in ("${prometheus}", "${kafka}") and p["targets"], p["title"]
        json.dumps(d)  # plain JSON all the way down
    # the pipeline board covers every declared metric of every stage
    exprs = " ".join(grafana.prometheus_exprs(boards["heatcache-pipeline.json"]))
    for spec in ALL_STAGES.values():
        for m in StageMetrics(spec).spec.metrics:
            assert m.name in exprs, m.name


def test_kafka_panels_read_documented_snapshot_fields() -> None:
    board = grafana.dashboards()["heatcache-metrics-topic.json"]
    fields = grafana.kafka_fields(board)
    assert set(fields) == set(ALL_STAGES)
    for stage, used in fields.items():
        assert used <= set(StageMetrics(ALL_STAGES[stage]).spec.fields()), stage
    for p in board["panels"]:
        for t in p.get("targets", []):
            assert t["topicName"] == "metrics" and t["datasource"]["type"] == grafana.KAFKA_PLUGIN
