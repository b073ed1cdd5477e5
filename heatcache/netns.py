"""Throw-away network namespaces for tests and benchmarks: real separate hosts (client, gateway,
origin) joined by veth pairs, with addresses that exist only inside them."""

from __future__ import annotations

import subprocess
import uuid
from dataclasses import dataclass, field


def sh(*args: str) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


@dataclass
class GatewayLab:
    """client --(veth)-- gateway --(veth)-- origin, the gateway routing between them.

    ``gw_client_if`` is the gateway's interface facing the client: what a mirror port sees.
    """

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    client_ip: str = "10.231.1.2"
    gw_client_ip: str = "10.231.1.1"
    gw_origin_ip: str = "10.231.2.1"
    origin_ip: str = "10.231.2.2"
    up: bool = False

    @property
    def client(self) -> str:
        return f"hc-cli-{self.tag}"

    @property
    def gateway(self) -> str:
        return f"hc-gw-{self.tag}"

    @property
    def origin(self) -> str:
        return f"hc-org-{self.tag}"

    @property
    def gw_client_if(self) -> str:
        return f"gc{self.tag}"

    def start(self) -> GatewayLab:
        try:
            for ns in (self.client, self.gateway, self.origin):
                sh("ip", "netns", "add", ns)
                sh("ip", "-n", ns, "link", "set", "lo", "up")
            self._link(self.client, f"cg{self.tag}", self.client_ip, self.gateway, self.gw_client_if,
                       self.gw_client_ip)
            self._link(self.origin, f"og{self.tag}", self.origin_ip, self.gateway, f"go{self.tag}",
                       self.gw_origin_ip)
            sh("ip", "netns", "exec", self.gateway, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            sh("ip", "-n", self.client, "route", "add", "default", "via", self.gw_client_ip)
            sh("ip", "-n", self.origin, "route", "add", "default", "via", self.gw_origin_ip)
            self.up = True
        except BaseException:
            self.stop()
            raise
        return self

    def _link(self, ns_a: str, if_a: str, ip_a: str, ns_b: str, if_b: str, ip_b: str) -> None:
        sh("ip", "link", "add", if_a, "netns", ns_a, "type", "veth", "peer", "name", if_b, "netns", ns_b)
        sh("ip", "-n", ns_a, "addr", "add", f"{ip_a}/24", "dev", if_a)
        sh("ip", "-n", ns_b, "addr", "add", f"{ip_b}/24", "dev", if_b)
        sh("ip", "-n", ns_a, "link", "set", if_a, "up")
        sh("ip", "-n", ns_b, "link", "set", if_b, "up")

    def exec_args(self, ns: str, *args: str) -> list[str]:
        return ["ip", "netns", "exec", ns, *args]

    def stop(self) -> None:
        for ns in (self.client, self.gateway, self.origin):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        self.up = False
