"""A real Prometheus (Debian's ``prometheus``) on loopback for tests: scrape config written here,
TSDB in a temporary folder, queried over its HTTP API."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from heatcache.netutil import free_port, terminate, wait_for_port


class Prometheus:
    def __init__(self, workdir: Path, targets: Mapping[str, str], job: str = "heatcache",
                 rule_files: tuple[Path, ...] = ()) -> None:
        """``targets``: stage label -> host:port of its /metrics."""
        self.workdir = workdir
        self.targets = dict(targets)
        self.job = job
        self.rule_files = rule_files
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.stack_settings: Any = None  # the scraped stack's settings (tests read its `metrics` topic)

    def start(self, timeout: float = 60.0) -> Prometheus:
        binary = shutil.which("prometheus")
        assert binary is not None, "Prometheus is needed: ./dev installs Debian's prometheus"
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [{
                "job_name": self.job, "scrape_timeout": "900ms",
                "static_configs": [{"targets": [addr], "labels": {"stage": stage}}
                                   for stage, addr in self.targets.items()],
            }],
        }
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        log = open(self.workdir / "prometheus.log", "ab")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={self.workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        if not wait_for_port("127.0.0.1", self.port, timeout, alive=self.proc):
            self.stop()
            raise AssertionError(f"Prometheus did not start; see {self.workdir / 'prometheus.log'}")
        deadline = time.monotonic() + timeout
        while not self._ready():  # the port opens before the TSDB is ready (503 until then)
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise AssertionError(f"Prometheus never got ready; see {self.workdir / 'prometheus.log'}")
            time.sleep(0.2)
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=5) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[Any]:
        data = self.api("query", query=expr)
        return list(data["result"]) if isinstance(data["result"], list) else [data["result"]]

    def wait_scraped(self, samples: int = 3, timeout: float = 90.0) -> None:
        """Until every target is up and has at least ``samples`` scrapes (rate() needs two)."""
        deadline = time.monotonic() + timeout
        want = len(self.targets)
        while True:
            got = self.query(f'count_over_time(up{{job="{self.job}"}}[5m]) >= {samples} and up == 1')
            if len(got) == want:
                return
            if time.monotonic() > deadline:
                targets = self.api("targets")["activeTargets"]
                raise AssertionError("targets not scraped: " + "; ".join(
                    f"{t['labels'].get('stage')}={t['health']} {t.get('lastError', '')}" for t in targets))
            time.sleep(0.5)

    def stop(self) -> None:
        terminate(self.proc, 15)
        self.proc = None
