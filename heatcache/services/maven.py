"""Java jars resolved with Maven once, into a per-user cache folder: the embedded Kafka broker's
(heatcache/kafka/pom.xml) and the Strimzi API checker's of the k8s tests.

``mvn dependency:copy-dependencies`` into a temporary folder, renamed into place and marked
complete, under a file lock, so parallel test sessions never resolve twice or see half a folder.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)


class MavenError(RuntimeError):
    """Maven is missing or could not resolve the jars; the message says why."""


def cache_dir(name: str) -> Path:
    """``$XDG_CACHE_HOME/heatcache/<name>`` (``~/.cache`` without it): one folder per pinned version."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "heatcache" / name


def copy_dependencies(pom: Path, target: Path, what: str) -> Path:
    """The runtime jars of ``pom`` in ``target``, resolved the first time; later calls return at once."""
    done = target / ".complete"
    if done.exists():
        return target
    mvn = shutil.which("mvn")
    if mvn is None:
        raise MavenError(f"Maven (mvn) is needed once to fetch the jars of {what}: apt-get install maven "
                         "(./dev installs it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # tests in parallel must not resolve twice
        if done.exists():
            return target
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        log.info("resolving the jars of %s with Maven (first run only)", what)
        proc = subprocess.run([mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
                               f"-DoutputDirectory={tmp}", "-DincludeScope=runtime"],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise MavenError(f"mvn failed resolving {what}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        done.touch()
    return target
