"""Throw-away network namespaces for tests and benchmarks: real separate hosts (client, gateway,
origin) joined by veth pairs, with addresses that exist only inside them."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path


def sh(*args: str) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def _ip(ns: str | None, *args: str) -> str:
    """``ip`` inside namespace ``ns``, or in this host's own namespace for None."""
    return sh("ip", *(("-n", ns) if ns else ()), *args)


def add_namespaces(*names: str) -> None:
    for ns in names:
        sh("ip", "netns", "add", ns)
        _ip(ns, "link", "set", "lo", "up")


def veth(ns_a: str | None, if_a: str, ip_a: str, ns_b: str, if_b: str, ip_b: str) -> None:
    """A veth pair between two namespaces (None: this host's), a /24 address and up on each end."""
    where_a = ("netns", ns_a) if ns_a else ()
    sh("ip", "link", "add", if_a, *where_a, "type", "veth", "peer", "name", if_b, "netns", ns_b)
    for ns, ifname, ip in ((ns_a, if_a, ip_a), (ns_b, if_b, ip_b)):
        _ip(ns, "addr", "add", f"{ip}/24", "dev", ifname)
        _ip(ns, "link", "set", ifname, "up")


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
            add_namespaces(self.client, self.gateway, self.origin)
            veth(self.client, f"cg{self.tag}", self.client_ip, self.gateway, self.gw_client_if, self.gw_client_ip)
            veth(self.origin, f"og{self.tag}", self.origin_ip, self.gateway, f"go{self.tag}", self.gw_origin_ip)
            sh("ip", "netns", "exec", self.gateway, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            sh("ip", "-n", self.client, "route", "add", "default", "via", self.gw_client_ip)
            sh("ip", "-n", self.origin, "route", "add", "default", "via", self.gw_origin_ip)
            self.up = True
        except BaseException:
            self.stop()
            raise
        return self

    def exec_args(self, ns: str, *args: str) -> list[str]:
        return ["ip", "netns", "exec", ns, *args]

    def stop(self) -> None:
        for ns in (self.client, self.gateway, self.origin):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        self.up = False


@dataclass
class CampusLab:
    """client --(veth)-- router --(veth)-- origin, and router --(veth)-- this host, the cache node.

    The client's resolver (``/etc/netns/<client>/resolv.conf``, which ``ip netns exec`` mounts
    over /etc/resolv.conf) is the cache node's address: curl and aria2c in the client namespace
    resolve through heatcache's DNS on port 53, exactly as campus clients would.
    """

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    client_ip: str = "10.232.1.2"
    origin_ip: str = "10.232.2.2"
    node_ip: str = "10.232.3.1"
    router_ips: tuple[str, str, str] = ("10.232.1.1", "10.232.2.1", "10.232.3.2")

    @property
    def client(self) -> str:
        return f"hc-c-{self.tag}"

    @property
    def router(self) -> str:
        return f"hc-r-{self.tag}"

    @property
    def origin(self) -> str:
        return f"hc-o-{self.tag}"

    @property
    def node_if(self) -> str:
        return f"hn{self.tag}"

    def start(self) -> CampusLab:
        try:
            add_namespaces(self.client, self.router, self.origin)
            r1, r2, r3 = self.router_ips
            veth(self.client, f"hc{self.tag}", self.client_ip, self.router, f"rc{self.tag}", r1)
            veth(self.origin, f"ho{self.tag}", self.origin_ip, self.router, f"ro{self.tag}", r2)
            for ns, gateway in ((self.client, r1), (self.origin, r2)):
                _ip(ns, "route", "add", "default", "via", gateway)
            # the cache node is this host's own namespace, on a veth of its own
            veth(None, self.node_if, self.node_ip, self.router, f"rn{self.tag}", r3)
            for net in ("10.232.1.0/24", "10.232.2.0/24"):
                sh("ip", "route", "add", net, "via", r3, "dev", self.node_if)
            sh("ip", "netns", "exec", self.router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            resolv = Path("/etc/netns") / self.client
            resolv.mkdir(parents=True, exist_ok=True)
            (resolv / "resolv.conf").write_text(f"nameserver {self.node_ip}\noptions timeout:2 attempts:2\n")
        except BaseException:
            self.stop()
            raise
        return self

    def exec_args(self, ns: str, *args: str) -> list[str]:
        return ["ip", "netns", "exec", ns, *args]

    def stop(self) -> None:
        subprocess.run(["ip", "link", "del", self.node_if], capture_output=True, check=False)
        for ns in (self.client, self.router, self.origin):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        shutil.rmtree(Path("/etc/netns") / self.client, ignore_errors=True)
