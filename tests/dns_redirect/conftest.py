"""The edge lab for tests/dns_redirect: an Edge on the lab's node address (hit front and aiohttp
behind it), the lab origin for pass-through, dnsmasq as the upstream resolver."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from cachestore.catalog import Entry, open_catalog
from cachestore.paths import object_relpath
from dns_redirect.edge import Edge
from dns_redirect.index import CacheIndex
from heatcache.cachekey import KeyRules
from heatcache.contract import CacheEvent
from heatcache.lab import NODE_IP, ORIGIN_IP, Origin, make_sample_files, shared_port
from heatcache.netutil import free_port
from heatcache.services.dnsmasq import Dnsmasq
from heatcache.services.nginx import NginxFront
from heatcache.settings import load_settings
from tests.dns_redirect.edgelab import ORIGIN_ETAG, ORIGIN_LM, EdgeLab, serving_edge


@contextlib.contextmanager
def edge_lab(tmp_path: Path, dnsmasq: Dnsmasq, nginx: bool = False) -> Iterator[EdgeLab]:
    port = shared_port()
    files = make_sample_files(tmp_path / "www", {"cached.bin": 300_000, "passed.bin": 200_000})
    origin = Origin(tmp_path / "www", ORIGIN_IP, port).start()
    settings = load_settings(state_dir=tmp_path / "state", upstream_dns=(dnsmasq.upstream,), node_address=NODE_IP,
                             allow_private_origins=True, outbound_address=NODE_IP, purge_token="s3cret",
                             edge_host="127.0.0.1" if nginx else NODE_IP, edge_port=free_port() if nginx else port,
                             edge_accel_prefix="/.heatcache/cache/" if nginx else "")
    key = f"http://origin.lab.test:{port}/cached.bin"
    rel = object_relpath(key)
    path = settings.cache_root / rel
    path.parent.mkdir(parents=True)
    path.write_bytes(files["cached.bin"])
    index = CacheIndex()
    index.apply(CacheEvent(key, "cached", path=rel, size=len(files["cached.bin"]), content_type="video/mp4",
                           etag=ORIGIN_ETAG, last_modified=ORIGIN_LM))  # the origin's validators
    index.apply(CacheEvent(f"http://internal.lab.test:{port}/x", "cached", path="objects/00/x"))
    index.apply(CacheEvent(f"http://escape.lab.test:{port}/x", "cached", path="../../../../etc/passwd"))
    catalog = open_catalog(settings.catalog)
    catalog.upsert(Entry(key, key, "origin.lab.test", rel, 300_000, "0" * 64, "", "", "video/mp4", "cached", 1.0))
    edge = Edge(settings, index, KeyRules.load(), catalog, hit_flush_s=3600)  # flushed by hand in tests
    front = NginxFront(settings, NODE_IP, port) if nginx else None
    try:
        with serving_edge(edge, settings.edge_host, settings.edge_port):
            if front is not None:
                front.start()
            try:
                yield EdgeLab(port, edge, origin, files)
            finally:
                if front is not None:
                    front.stop()
    finally:
        catalog.close()
        origin.stop()


@pytest.fixture
def lab(tmp_path: Path, dnsmasq: Dnsmasq) -> Iterator[EdgeLab]:
    with edge_lab(tmp_path, dnsmasq) as running:
        yield running


@pytest.fixture
def nginx_lab(tmp_path: Path, dnsmasq: Dnsmasq) -> Iterator[EdgeLab]:
    """The same lab with nginx (X-Accel-Redirect) in front of the edge on the node address."""
    with edge_lab(tmp_path, dnsmasq, nginx=True) as running:
        yield running
