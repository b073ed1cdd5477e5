"""The cache pod in k8s. The edge runs as non-root without NET_BIND_SERVICE, so every port it
will try to listen on, as dns_redirect.edge.start_listeners plans them from the rendered
settings (its own port, each sniffed port, the port map), is >= 1024 and a container port;
clients' 80 and 443 reach it through the port map (the Service's targets), so the DNS steers
port-80/443 keys. The fetcher's policy proxy runs as its own container (a fetch container
restart cuts no download) with the fetcher's port and aria2 secret, probed by its own probe."""

from __future__ import annotations

from typing import Any

import pytest

from dns_redirect.ports import edge_listeners, parse_port_map, tls_client_ports
from tests.k8s.conftest import OVERLAYS
from tests.k8s.test_manifests import config_env, named, pod_spec, stage_containers, stage_settings


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_edge_binds_no_privileged_port_and_still_serves_80_and_443(
        rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objs = rendered[overlay]
    (w, c), = [(w, c) for w, c, stage in stage_containers(objs) if stage == "edge"]
    s = stage_settings(config_env(objs, c, w["metadata"].get("namespace")))
    port_map = parse_port_map(s.edge_port_map)
    plan = edge_listeners(s.edge_port, s.sniff_ports, port_map, s.edge_tls_ports)
    container_ports = {p["containerPort"] for p in c["ports"]}
    listens = {*plan, *s.edge_tls_ports}
    assert all(p >= 1024 for p in listens), f"{overlay}: the edge would bind {sorted(listens)} as non-root"
    assert listens <= container_ports, f"{overlay}: listens on {sorted(listens)}, ports {sorted(container_ports)}"
    served_http = {client for clients in plan.values() for client in clients}
    assert 80 in served_http and 443 in tls_client_ports(s.edge_tls_ports, port_map)
    assert "NET_BIND_SERVICE" not in c["securityContext"]["capabilities"].get("add", [])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_policy_proxy_is_its_own_container_with_the_fetchers_settings(
        rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objs = rendered[overlay]
    (w, fetch), = [(w, c) for w, c, stage in stage_containers(objs) if stage == "fetch"]
    ns = w["metadata"].get("namespace")
    (proxy,) = [c for c in pod_spec(w)["containers"] if c.get("args") == ["policy-proxy"]]
    fetch_s, proxy_s = (stage_settings(config_env(objs, c, ns)) for c in (fetch, proxy))
    assert fetch_s.policy_proxy_port and fetch_s.policy_proxy_port == proxy_s.policy_proxy_port
    assert fetch_s.policy_proxy_port not in {p["containerPort"] for c in pod_spec(w)["containers"]
                                             for p in c.get("ports", [])}  # loopback only, never a Service's
    # the proxy's password is derived from the aria2 secret: both read the same Secret key
    def secret_ref(c: dict[str, Any]) -> dict[str, str]:
        (item,) = [e for e in c["env"] if e["name"] == "HEATCACHE_ARIA2_SECRET"]
        return dict(item["valueFrom"]["secretKeyRef"])

    assert secret_ref(fetch) == secret_ref(proxy)
    for kind in ("readinessProbe", "livenessProbe"):
        assert proxy[kind]["exec"]["command"] == ["python", "-m", "heatcache.probe", "policy-proxy"]
    assert named(objs, "ConfigMap", "heatcache-cache", ns)["data"]["HEATCACHE_POLICY_PROXY_PORT"]
