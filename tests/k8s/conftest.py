"""Renders every kustomize overlay once per session (``kubectl kustomize``; no cluster needed).

A missing kustomize fails these tests with the reason: ./dev provides one."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

K8S = Path(__file__).resolve().parents[2] / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").exists())


def kustomize(path: Path) -> list[dict[str, Any]]:
    # the kustomize binary ./dev builds when kubectl's own is missing or too old, else kubectl's
    if (binary := shutil.which("kustomize")) is not None:
        cmd = [binary, "build", str(path)]
    elif (kubectl := shutil.which("kubectl")) is not None:
        cmd = [kubectl, "kustomize", str(path)]
    else:
        pytest.fail("kustomize is needed (kubectl's built-in one, or the binary ./dev builds)")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """Every overlay's rendered objects (the base too, as "base")."""
    out = {name: kustomize(K8S / "overlays" / name) for name in OVERLAYS}
    out["base"] = kustomize(K8S / "base")
    return out
