"""The edge's origin address policy is the fetcher's (issue 18): private origins are refused
unless listed in HEATCACHE_ORIGIN_ALLOW_NETWORKS; origin addresses are kept for their TTL."""

from __future__ import annotations

from pathlib import Path

from dns_redirect.edge import Edge
from dns_redirect.index import CacheIndex
from heatcache.cachekey import KeyRules
from heatcache.contract import CacheEvent
from heatcache.lab import NODE_IP, ORIGIN_IP, Origin, shared_port
from heatcache.services.dnsmasq import Dnsmasq
from heatcache.settings import load_settings
from tests.dns_redirect.edgelab import EdgeLab, serving_edge


def test_listed_private_networks_are_allowed_origins(tmp_path: Path, dnsmasq: Dnsmasq) -> None:
    port = shared_port()
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "page").write_bytes(b"from the origin")
    origin = Origin(tmp_path / "www", ORIGIN_IP, port).start()
    settings = load_settings(state_dir=tmp_path / "state", upstream_dns=(dnsmasq.upstream,), node_address=NODE_IP,
                             origin_allow_networks=(f"{ORIGIN_IP}/32",), edge_fill=False)
    index = CacheIndex()
    index.apply(CacheEvent(f"http://internal.lab.test:{port}/a", "cached", path="objects/00/a"))
    index.apply(CacheEvent(f"http://origin.lab.test:{port}/a", "cached", path="objects/00/b"))
    edge = Edge(settings, index, KeyRules.load())
    try:
        with serving_edge(edge, NODE_IP, port):
            lab = EdgeLab(port, edge, origin, {})
            status, _, body = lab.get("/page", host="origin.lab.test")  # 127.0.0.2: listed
            assert (status, body) == (200, b"from the origin")
            assert lab.get("/page", host="internal.lab.test")[0] == 403  # 10.1.2.3: not listed
            assert lab.get("/page", host="origin.lab.test")[0] == 200
            assert edge.resolver.cache is not None and edge.resolver.cache.data  # answers kept for their TTL
    finally:
        origin.stop()
    assert origin.hits["/page"] == 2
