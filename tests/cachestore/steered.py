"""The edge set-up the in-path fill tests share: one seed object cached (so the origin's host is
steered), an empty index and catalog beside it, the edge on the lab's node address."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cachestore.catalog import Catalog, open_catalog
from cachestore.paths import object_relpath
from dns_redirect.edge import Edge
from dns_redirect.index import CacheIndex
from heatcache.cachekey import KeyRules
from heatcache.contract import CacheEvent
from heatcache.lab import NODE_IP
from heatcache.services.dnsmasq import Dnsmasq
from heatcache.settings import Settings, load_settings


def steered_edge(tmp_path: Path, dnsmasq: Dnsmasq, port: int, seed: bytes,
                 **overrides: Any) -> tuple[Settings, str, Catalog, CacheIndex, Edge]:
    """-> (settings, the seed's key, catalog, index, edge); ``overrides`` are more settings."""
    settings = load_settings(state_dir=tmp_path / "state", upstream_dns=(dnsmasq.upstream,), node_address=NODE_IP,
                             allow_private_origins=True, outbound_address=NODE_IP, edge_host=NODE_IP, edge_port=port,
                             **{"cache_min_free_bytes": 0, **overrides})
    seed_key = f"http://origin.lab.test:{port}/seed.bin"  # one cached object: the host is steered
    rel = object_relpath(seed_key)
    (settings.cache_root / rel).parent.mkdir(parents=True)
    (settings.cache_root / rel).write_bytes(seed)
    catalog = open_catalog(settings.catalog)
    index = CacheIndex()
    index.apply(CacheEvent(seed_key, "cached", path=rel, size=len(seed)))
    edge = Edge(settings, index, KeyRules.load(), catalog, hit_flush_s=3600)
    return settings, seed_key, catalog, index, edge
