"""Strimzi's API model (``io.strimzi:api`` from Maven Central), resolved once per user like the
embedded Kafka's jars, and the Java checker that deserializes custom resources with it."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from heatcache.services.maven import cache_dir, copy_dependencies

HERE = Path(__file__).resolve().parent / "strimzi"
POM = HERE / "pom.xml"
CHECKER = HERE / "StrimziCheck.java"


def strimzi_version() -> str:
    match = re.search(r"<strimzi.version>([^<]+)</strimzi.version>", POM.read_text())
    assert match, "strimzi.version missing from tests/k8s/strimzi/pom.xml"
    return match.group(1)


def ensure_jars() -> Path:
    return copy_dependencies(POM, cache_dir(f"strimzi-api-{strimzi_version()}"), f"io.strimzi:api {strimzi_version()}")


def checker_classes(jars: Path) -> Path:
    """StrimziCheck compiled once per version of its source, beside the jars (java's source
    launcher compiled it again on every call: seconds of CPU each)."""
    digest = hashlib.sha256(CHECKER.read_bytes()).hexdigest()[:16]
    target = jars.parent / f"strimzi-check-{digest}"
    if (target / "StrimziCheck.class").exists():
        return target
    javac = shutil.which("javac")
    assert javac is not None, "a Java 17 JDK (javac) is needed (./dev installs it)"
    tmp = Path(tempfile.mkdtemp(dir=jars.parent, prefix=f".{target.name}-"))
    proc = subprocess.run([javac, "-d", str(tmp), "-cp", f"{jars}/*", str(CHECKER)], capture_output=True, text=True,
                          check=False, timeout=180)
    assert proc.returncode == 0, f"javac StrimziCheck.java failed:\n{proc.stdout}\n{proc.stderr}"
    try:
        tmp.rename(target)  # atomic: a parallel session compiling too keeps its own copy out of the way
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def check(resources: list[dict[str, Any]], api_version: str) -> tuple[int, str]:
    """Run the checker over these resources: (exit code, its report)."""
    java = shutil.which("java")
    assert java is not None, "a Java 17 JDK is needed (./dev installs it)"
    jars = ensure_jars()
    classes = checker_classes(jars)
    # a short-lived JVM: the C1 compiler alone starts it in about half the CPU
    proc = subprocess.run([java, "-XX:TieredStopAtLevel=1", "-cp", f"{jars}/*:{classes}", "StrimziCheck", api_version],
                          input=json.dumps(resources), capture_output=True, text=True, check=False, timeout=180)
    report = "\n".join(line for line in proc.stdout.splitlines() if line.startswith(("ok ", "error ")))
    if proc.returncode not in (0, 1) or not report:
        raise AssertionError(f"StrimziCheck failed to run ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.returncode, report
