"""Prometheus exposition of a stage's counters (``/metrics``), next to the `metrics` topic.

Stages keep plain ``Counter`` objects (cheap on the hot path); a custom collector turns them into
``heatcache_<stage>_total{counter="..."}`` samples when Prometheus scrapes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client import start_http_server
from prometheus_client.core import CollectorRegistry, CounterMetricFamily
from prometheus_client.registry import Collector


class CountersCollector(Collector):
    def __init__(self, stage: str, counters: Counter[str]) -> None:
        self.stage = stage
        self.counters = counters

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(f"heatcache_{self.stage}", f"heatcache {self.stage} counters",
                                     labels=["counter"])
        for name, value in sorted(self.counters.copy().items()):
            family.add_metric([name], value)
        yield family


def serve_metrics(port: int, stage: str, counters: Counter[str], host: str = "0.0.0.0") -> CollectorRegistry:
    """Start the /metrics HTTP server in a daemon thread; returns its registry."""
    registry = CollectorRegistry()
    registry.register(CountersCollector(stage, counters))
    start_http_server(port, addr=host, registry=registry)
    return registry
