"""Which ports the cache node must answer for a steered host (pure).

Steering moves every connection to a name onto the node, so a host may be steered only while
the edge serves every port that host's cached keys use: ``http://h/x`` needs HTTP on 80,
``http://h:8080/x`` HTTP on 8080, ``https://h/x`` the TLS passthrough on 443. The edge listens
on ``HEATCACHE_EDGE_PORT`` and on every port in ``HEATCACHE_SNIFF_PORTS`` (the ports the sniffer
learns keys from); ``HEATCACHE_EDGE_PORT_MAP`` ("80:8080") says a client port reaches a listener
on another port (a Kubernetes Service, a NAT rule), so a non-root edge can serve port 80. The
edge reports the client ports it really serves in its health JSON, and the DNS checks each host
against that report.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Mapping

DEFAULT_PORTS = {"http": 80, "https": 443}
TLS_SCHEMES = frozenset({"https"})


def key_port(key: str) -> tuple[str, int]:
    """(scheme, port) the clients of a cache key connect to: the explicit port, else the
    scheme's default (keys are normalized: the default port is never written)."""
    scheme, _, rest = key.partition("://")
    authority = rest.partition("/")[0].partition("?")[0]
    port = ""
    if authority.startswith("["):
        port = authority.partition("]")[2].removeprefix(":")
    elif ":" in authority:
        port = authority.rpartition(":")[2]
    scheme = scheme.lower()
    if port.isdigit() and 0 < int(port) < 65536:
        return scheme, int(port)
    return scheme, DEFAULT_PORTS.get(scheme, 80)


def ports_served(needed: Iterable[tuple[str, int]], http_ports: Iterable[int], tls_ports: Iterable[int]) -> bool:
    """Whether the edge answers every (scheme, port) in ``needed``: HTTP keys on an HTTP
    listener's client port, HTTPS keys on a TLS passthrough port."""
    http, tls = frozenset(http_ports), frozenset(tls_ports)
    return all(port in (tls if scheme in TLS_SCHEMES else http) for scheme, port in needed)


def parse_port_map(spec: Iterable[str]) -> dict[int, int]:
    """``["80:8080"]`` -> ``{80: 8080}`` (client port -> the edge's listening port)."""
    out: dict[int, int] = {}
    for item in spec:
        client, sep, listen = item.strip().partition(":")
        if not sep or not client.isdigit() or not listen.isdigit():
            raise ValueError(f"port map entry {item!r} is not CLIENT_PORT:LISTEN_PORT")
        c, ln = int(client), int(listen)
        if not (0 < c < 65536 and 0 < ln < 65536):
            raise ValueError(f"port map entry {item!r}: ports are 1-65535")
        if c in out and out[c] != ln:
            raise ValueError(f"port map: client port {c} mapped twice")
        out[c] = ln
    return out


def edge_listeners(edge_port: int, sniff_ports: Iterable[int], port_map: Mapping[int, int],
                   tls_ports: Iterable[int] = ()) -> dict[int, list[int]]:
    """listening port -> the client ports it serves over HTTP, for the edge's port, every sniffed
    port and every mapped client port (map entries onto a TLS port are the passthrough's).
    ``edge_port`` 0 (tests: any free port) is listened on as is."""
    tls = frozenset(tls_ports)
    clients = [edge_port, *sniff_ports, *(c for c, ln in port_map.items() if ln not in tls)]
    out: dict[int, list[int]] = {}
    for c in dict.fromkeys(clients):  # in order, once each
        listen = port_map.get(c, c)
        out.setdefault(listen, [])
        if c not in out[listen]:
            out[listen].append(c)
    return out


def tls_client_ports(tls_ports: Iterable[int], port_map: Mapping[int, int]) -> list[int]:
    """The client ports the TLS passthrough serves: its own and those mapped onto them
    ("443:8443" behind a Service)."""
    own = list(dict.fromkeys(tls_ports))
    return [*own, *(c for c, ln in port_map.items() if ln in own and c not in own)]


def bind_advice(port: int, err: int, unprivileged_start: int = 1024, tls: bool = False) -> str:
    """What to do when the edge cannot listen on ``port`` (errno ``err``): for a privileged port
    (below ``unprivileged_start``, net.ipv4.ip_unprivileged_port_start) without the right, the
    three ways to give a non-root edge that port; "" for other errors."""
    if err not in (errno.EACCES, errno.EPERM) or port >= unprivileged_start:
        return ""
    high = 8443 if tls else 8080
    setting = "HEATCACHE_EDGE_TLS_PORTS" if tls else "HEATCACHE_EDGE_PORT"
    return (f"port {port} needs root or CAP_NET_BIND_SERVICE. Fix one of: give the edge the capability "
            f"(systemd AmbientCapabilities=CAP_NET_BIND_SERVICE; Kubernetes securityContext.capabilities.add: "
            f"[NET_BIND_SERVICE]; or setcap cap_net_bind_service=+ep on the python binary); or listen high and "
            f"map the port: {setting}={high} with HEATCACHE_EDGE_PORT_MAP={port}:{high} and a NAT rule or "
            f"Service sending {port} there (iptables -t nat -A PREROUTING -p tcp --dport {port} -j REDIRECT "
            f"--to-ports {high}); or lower sysctl net.ipv4.ip_unprivileged_port_start to {port}")


def unprivileged_port_start(path: str = "/proc/sys/net/ipv4/ip_unprivileged_port_start") -> int:
    """The lowest port a process without CAP_NET_BIND_SERVICE may bind (1024 where unknown); the
    one read of the system here, for :func:`bind_advice`."""
    try:
        with open(path) as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return 1024
