"""The edge in k8s runs as non-root without NET_BIND_SERVICE, so every port it will try to
listen on, as dns_redirect.edge.start_listeners plans them from the rendered settings (its own
port, each sniffed port, the port map), is >= 1024 and a container port; clients' 80 and 443
reach it through the port map (the Service's targets), so the DNS steers port-80/443 keys."""

from __future__ import annotations

from typing import Any

import pytest

from dns_redirect.ports import edge_listeners, parse_port_map, tls_client_ports
from tests.k8s.conftest import OVERLAYS
from tests.k8s.test_manifests import config_env, stage_containers, stage_settings


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
