"""nginx (Debian ``nginx-light``) in front of the edge, for tests and the lab: the standalone
config from ``heatcache.nginxconf`` in a private directory, on a given address."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from heatcache.netutil import terminate, wait_for_port
from heatcache.nginxconf import standalone
from heatcache.services.procs import with_parent_death
from heatcache.settings import Settings


class NginxSetupError(RuntimeError):
    """nginx is missing or did not start."""


class NginxFront:
    def __init__(self, settings: Settings, host: str, port: int) -> None:
        self.settings = settings
        self.host = host
        self.port = port
        self.workdir = Path(tempfile.mkdtemp(prefix="heatcache-nginx-"))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> str:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(binary).exists():
            raise NginxSetupError("nginx not found (apt-get install nginx-light)")
        (self.workdir / "tmp").mkdir()
        conf = self.workdir / "nginx.conf"
        conf.write_text(standalone(self.settings, f"{self.host}:{self.port}", str(self.workdir)))
        output = self.workdir / "output.log"  # what nginx says before its error_log is open
        with open(output, "wb") as out:
            self.proc = subprocess.Popen(with_parent_death([binary, "-c", str(conf), "-p", str(self.workdir)]),
                                         stdout=out, stderr=subprocess.STDOUT)
        if not wait_for_port(self.host, self.port, timeout, self.proc):
            said = "".join(p.read_text(errors="replace") for p in (output, self.workdir / "error.log") if p.exists())
            self.stop()
            raise NginxSetupError(f"nginx did not listen on {self.host}:{self.port}: {said[-2000:]}")
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        terminate(self.proc)
        self.proc = None
        shutil.rmtree(self.workdir, ignore_errors=True)
