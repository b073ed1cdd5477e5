"""The fetcher's address-policy proxy (fetcher/policyproxy.py) as its own process on 127.0.0.1,
started and supervised by ``heatcache up`` like aria2c: a fetcher restart or crash then leaves
aria2c's running downloads on their connections (they went through a proxy inside the fetcher,
which died with it)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from heatcache.netutil import free_port, port_is_free, terminate, wait_for_port
from heatcache.services.procs import port_owner, with_parent_death


class PolicyProxySetupError(RuntimeError):
    """The proxy's port is held by another process, or the proxy did not open it."""


class PolicyProxyDaemon:
    """``heatcache policy-proxy`` on ``port`` with the stack's settings (``env``: HEATCACHE_*)."""

    def __init__(self, state_dir: Path, env: Mapping[str, str], port: int = 0) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.env = dict(env)
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> int:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        elif not port_is_free(self.port):
            raise PolicyProxySetupError(f"policy proxy port {self.port} is held by "
                                        f"{port_owner(self.port) or 'another process'}")
        env = {**self.env, "HEATCACHE_POLICY_PROXY_PORT": str(self.port), "HEATCACHE_METRICS_PORT": "0"}
        log = open(self.state_dir / "policy-proxy.log", "ab")
        self.proc = subprocess.Popen(with_parent_death([sys.executable, "-m", "heatcache.cli", "policy-proxy"]),
                                     env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        if not wait_for_port("127.0.0.1", self.port, timeout, alive=self.proc):
            self.stop()
            raise PolicyProxySetupError(f"the policy proxy did not open port {self.port}; "
                                        f"see {self.state_dir / 'policy-proxy.log'}")
        return self.port

    def stop(self) -> None:
        terminate(self.proc, 10)
        self.proc = None
