"""The CLI as a user runs it (heatcache/cli.py): clear errors, and the demo end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(args: list[str], env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "heatcache.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=ROOT, check=False)


def test_invalid_setting_is_a_clear_error() -> None:
    proc = run(["fetch"], {"HEATCACHE_HEAT_MIN_CLIENTS": "zero"})
    assert proc.returncode == 2
    assert "HEATCACHE_HEAT_MIN_CLIENTS" in proc.stderr and "Traceback" not in proc.stderr


def test_stage_without_bootstrap_says_what_to_do() -> None:
    proc = run(["streams"], {"HEATCACHE_KAFKA_BOOTSTRAP": ""})
    assert proc.returncode == 2 and "heatcache up" in proc.stderr


@pytest.mark.integration
def test_demo_shows_local_hits(tmp_path: Path) -> None:
    proc = run(["demo"], {"HEATCACHE_STATE_DIR": str(tmp_path), "HEATCACHE_KAFKA_FAST_START": "true"}, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "local hits: 20" in proc.stdout
    assert "responses with wrong bytes" in proc.stdout
    assert list(tmp_path.iterdir()) == []  # the demo cleans up after itself
