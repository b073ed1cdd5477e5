"""The per-port steering check and the edge's listeners (pure)."""

from __future__ import annotations

import pytest

from dns_redirect.ports import edge_listeners, key_port, parse_port_map, ports_served, tls_client_ports


def test_key_port_is_explicit_or_the_schemes_default() -> None:
    assert key_port("http://a.test/x?y=1") == ("http", 80)
    assert key_port("http://a.test:8080/x") == ("http", 8080)
    assert key_port("https://a.test/x") == ("https", 443)
    assert key_port("https://a.test:8443") == ("https", 8443)
    assert key_port("http://[2001:db8::1]:81/x") == ("http", 81)
    assert key_port("http://[2001:db8::1]/x") == ("http", 80)


def test_a_host_is_served_only_when_every_port_its_keys_use_is() -> None:
    assert ports_served([("http", 80), ("http", 8080)], [80, 8080], [443])
    assert not ports_served([("http", 80), ("http", 8081)], [80, 8080], [443])
    assert ports_served([("https", 443)], [80], [443])
    assert not ports_served([("https", 443)], [80, 443], [])  # 443 as plain HTTP is not TLS
    assert ports_served([], [], [])


def test_listeners_cover_the_edge_port_the_sniffed_ports_and_the_map() -> None:
    assert edge_listeners(8080, (80, 8080), {}) == {8080: [8080], 80: [80]}
    # behind a Service/NAT: clients' port 80 reaches the listener on 8080 (no root needed)
    assert edge_listeners(8080, (80, 8080), {80: 8080}) == {8080: [8080, 80]}
    assert edge_listeners(8080, (80,), {80: 8080, 81: 9081}) == {8080: [8080, 80], 9081: [81]}


def test_port_map_is_validated() -> None:
    assert parse_port_map(["80:8080", " 81:8081"]) == {80: 8080, 81: 8081}
    for bad in (["80"], ["80:x"], ["0:8080"], ["80:8080", "80:9090"]):
        with pytest.raises(ValueError):
            parse_port_map(bad)


def test_map_entries_onto_tls_ports_are_the_passthroughs() -> None:
    # k8s: Service 80 -> 8080 (HTTP), 443 -> 8443 (TLS passthrough)
    port_map = {80: 8080, 443: 8443}
    assert edge_listeners(8080, (80, 8080), port_map, (8443,)) == {8080: [8080, 80]}
    assert tls_client_ports((8443,), port_map) == [8443, 443]
    assert tls_client_ports((443,), {}) == [443]
