"""The process set-up the benchmarks share: a scratch folder, nginx on a private config, a
Python helper process that prints "ready", services with ``stop()`` (broker, aria2c, dnsmasq),
all stopped and removed on exit (in reverse order); and wrk's figures.

Used by bench/edge_bench.py, bench/fetch_bench.py and bench/passthrough_bench.py (they each
had their own copy of this)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Protocol

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from heatcache.netutil import terminate, wait_for_port  # noqa: E402
from heatcache.nginxconf import private_conf  # noqa: E402


class Service(Protocol):
    def stop(self) -> None: ...


class Procs:
    """``with Procs("bench-edge-") as p:`` -> ``p.work`` (a fresh folder), ``p.nginx(http_block,
    (ip, port), ...)``, ``p.python(script, *args)``, ``p.spawn(cmd)``, ``p.service(obj)``."""

    def __init__(self, prefix: str) -> None:
        self.work = Path(tempfile.mkdtemp(prefix=prefix))
        self._stops: list[object] = []  # Popen or Service, stopped last-first

    def spawn(self, cmd: list[str], **popen: object) -> subprocess.Popen[str]:
        proc: subprocess.Popen[str] = subprocess.Popen(cmd, text=True, **popen)  # type: ignore[call-overload]
        self._stops.append(proc)
        return proc

    def nginx(self, http_block: str, *listens: tuple[str, int], timeout: float = 10.0) -> subprocess.Popen[str]:
        """nginx (Debian's nginx-light) on ``http_block`` in a private config under ``work``;
        waits until every ``(ip, port)`` of ``listens`` accepts connections."""
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        (self.work / "tmp").mkdir(exist_ok=True)
        (self.work / "nginx.conf").write_text(private_conf(http_block, str(self.work)))
        proc = self.spawn([binary, "-c", str(self.work / "nginx.conf"), "-p", str(self.work)])
        for ip, port in listens:
            assert wait_for_port(ip, port, timeout), f"nginx: nothing on {ip}:{port}"
        return proc

    def python(self, script: str, *args: str) -> subprocess.Popen[str]:
        """``python -c script args`` from the repository; returns once it printed "ready"."""
        proc = self.spawn([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, cwd=ROOT)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", "helper did not start"
        return proc

    def service(self, obj: Service) -> Service:
        self._stops.append(obj)
        return obj

    def close(self) -> None:
        for item in reversed(self._stops):
            if isinstance(item, subprocess.Popen):
                terminate(item)
            else:
                item.stop()  # type: ignore[attr-defined]
        self._stops.clear()
        shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None) -> None:
        self.close()


def nginx_missing() -> bool:
    return not Path(shutil.which("nginx") or "/usr/sbin/nginx").exists()


def wrk(url: str, seconds: int, host: str = "") -> tuple[float, float]:
    """``wrk -t2 -c32`` on ``url`` for ``seconds``: (requests/s, bytes/s); prints wrk's error lines."""
    cmd = ["wrk", "-t2", "-c32", f"-d{seconds}s", *(["-H", f"Host: {host}"] if host else []), url]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", proc.stdout).group(1))  # type: ignore[union-attr]
    tr = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", proc.stdout)
    scale = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9}
    bps = float(tr.group(1)) * scale.get(tr.group(2), 1) if tr else 0.0
    if "Non-2xx" in proc.stdout or "Socket errors" in proc.stdout:
        port = url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[-1]
        print(f"  wrk on port {port}: {proc.stdout.strip().splitlines()[-3:]}")
    return rps, bps
