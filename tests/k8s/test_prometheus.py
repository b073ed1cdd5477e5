"""A real Prometheus scrapes every stage of a running `heatcache up` stack; every expression a
dashboard panel or an alert rule uses must return data from it (no panel on a metric that does
not exist, no alert on a label no stage sets)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from heatcache.metrics import ALL_STAGES
from heatcache.netutil import free_port, free_port_run, free_port_udp_tcp
from heatcache.settings import load_settings
from heatcache.stack import STAGES, Stack
from ops import grafana
from tests.k8s.promserver import Prometheus

RULES = Path(grafana.OUT) / "heatcache-alerts.yaml"
# the CLI's stage names and the names the stages declare their metrics under
SPEC_OF = {"sniff": "sniffer", "fetch": "fetcher", "streams": "streams", "dns": "dns", "edge": "edge",
           "console": "console"}


def scraped_stages() -> list[str]:
    """The stack's stages that declare metrics (every pipeline stage once all are on the runner)."""
    return [s for s in STAGES if SPEC_OF.get(s) in ALL_STAGES]


@pytest.fixture(scope="module")
def prom(kafka: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    work = tmp_path_factory.mktemp("prom-stack")
    base = free_port_run(len(STAGES))
    settings = load_settings(
        state_dir=work / "state", topic_prefix=f"t{uuid.uuid4().hex[:10]}-", kafka_bootstrap=kafka,
        client_id_secret="test-secret", aria2_secret="test-aria2", lab_mode=True, metrics_port=base,
        metrics_interval_s=1.0, dns_port=free_port_udp_tcp(),
        edge_port=free_port(), aria2_rpc_port=free_port(), console_port=free_port(), sniff_ports=(free_port(),),
        dns_health_interval_s=0.5, edge_tls_ports=(free_port(),),
    )
    with Stack(settings, console=None):
        targets = {stage: f"127.0.0.1:{base + STAGES.index(stage)}" for stage in scraped_stages()}
        server = Prometheus(work / "prometheus", targets, rule_files=(RULES,)).start()
        server.stack_settings = settings
        try:
            server.wait_scraped()
            yield server
        finally:
            server.stop()


def test_every_stage_is_scraped_and_declares_its_metrics(prom: Prometheus) -> None:
    up = {r["metric"]["stage"]: r["value"][1] for r in prom.query('up{job="heatcache"}')}
    assert up == dict.fromkeys(scraped_stages(), "1")
    assert {"sniff", "dns", "edge"} <= set(up)
    for stage in scraped_stages():
        spec = SPEC_OF[stage]
        got = prom.query(f'{{job="heatcache", stage="{stage}", __name__=~"heatcache_{spec}_.+"}}')
        assert got, f"{stage} serves none of its declared metrics"


def test_every_dashboard_expression_returns_data(prom: Prometheus) -> None:
    exprs = [e for d in grafana.dashboards().values() for e in grafana.prometheus_exprs(d)]
    assert len(exprs) > 20
    empty = [e for e in exprs if not prom.query(e)]
    assert not empty, "dashboard expressions without data:\n" + "\n".join(empty)


_SELECTOR = re.compile(r"(\{__name__=~\"[^\"]+\"[^}]*\}|\b(?:heatcache_[a-z0-9_]+|up)\b(?:\{[^}]*\})?)")


def test_every_alert_selector_returns_data(prom: Prometheus) -> None:
    """Alert conditions are empty while all is well; each series selector they compare must not be."""
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    missing = []
    for rule in rules:
        selectors = [s for s in _SELECTOR.findall(rule["expr"]) if s not in ("up",) or "{" in s]
        assert selectors, rule["alert"]
        missing += [f"{rule['alert']}: {s}" for s in selectors if not prom.query(s)]
    assert not missing, "alert selectors without data:\n" + "\n".join(missing)
    # the real server loaded the rules (not only promtool)
    groups = prom.api("rules")["groups"]
    assert {r["name"] for g in groups for r in g["rules"]} == {r["alert"] for r in rules}


def test_kafka_panels_read_fields_the_stages_publish(prom: Prometheus) -> None:
    """The Kafka data-source dashboard's panels filter `metrics` records by stage and show named
    fields: every such field must be in the records the running stages really publish."""
    import time

    import orjson

    from heatcache import contract
    from heatcache.kafkautil import read_topic

    s = prom.stack_settings
    want = grafana.kafka_fields(grafana.dashboards()["heatcache-metrics-topic.json"])
    assert want

    def published() -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for m in read_topic(s.kafka_bootstrap, s.topic(contract.METRICS), timeout=10):
            rec = orjson.loads(m.value())
            out.setdefault(rec["stage"], set()).update(rec)
        return out

    deadline = time.monotonic() + 60
    got = published()
    while set(want) - set(got) and time.monotonic() < deadline:
        time.sleep(1)
        got = published()
    missing = {stage: sorted(fields - got.get(stage, set())) for stage, fields in want.items()
               if fields - got.get(stage, set())}
    assert not missing, f"Kafka panel fields no stage record carries: {missing}"
