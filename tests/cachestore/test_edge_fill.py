"""The edge's in-path fill goes through the cache store: filling past the quota evicts (files
gone, catalog rows marked, CacheEvent(evicted) applied to the index), the total stays under the
quota at every sample, clients always get whole answers, and an answer to a request with a Cookie
is not stored unless the origin says it is shared."""

from __future__ import annotations

from pathlib import Path

from cachestore.catalog import Entry, open_catalog
from cachestore.paths import object_relpath
from dns_redirect.edge import Edge
from dns_redirect.index import CacheIndex
from heatcache.cachekey import KeyRules
from heatcache.contract import CacheEvent
from heatcache.lab import NODE_IP, ORIGIN_IP, Origin, make_sample_files, shared_port
from heatcache.services.dnsmasq import Dnsmasq
from heatcache.settings import load_settings
from tests.dns_redirect.edgelab import EdgeLab, serving_edge


def test_fill_respects_the_quota(tmp_path: Path, dnsmasq: Dnsmasq) -> None:
    port = shared_port()
    names = {f"f{i}.bin": 100_000 for i in range(6)}
    files = make_sample_files(tmp_path / "www", {"seed.bin": 10_000, **names})
    origin = Origin(tmp_path / "www", ORIGIN_IP, port).start()
    quota = 330_000
    settings = load_settings(state_dir=tmp_path / "state", upstream_dns=(dnsmasq.upstream,), node_address=NODE_IP,
                             allow_private_origins=True, outbound_address=NODE_IP, edge_host=NODE_IP, edge_port=port,
                             cache_max_bytes=quota, cache_max_object_fraction=0.5, cache_min_free_bytes=0)
    seed_key = f"http://origin.lab.test:{port}/seed.bin"  # one cached object: the host is steered
    rel = object_relpath(seed_key)
    (settings.cache_root / rel).parent.mkdir(parents=True)
    (settings.cache_root / rel).write_bytes(files["seed.bin"])
    catalog = open_catalog(settings.catalog)
    catalog.upsert(Entry(seed_key, seed_key, "origin.lab.test", rel, 10_000, "0" * 64, "", "", "", "cached", 1.0))
    index = CacheIndex()
    index.apply(CacheEvent(seed_key, "cached", path=rel, size=10_000))
    edge = Edge(settings, index, KeyRules.load(), catalog, hit_flush_s=3600)
    lab = EdgeLab(port, edge, origin, files)
    try:
        with serving_edge(edge, NODE_IP, port):
            for name in names:
                status, headers, body = lab.get(f"/{name}")
                assert status == 200 and body == files[name] and headers["x-cache"] == "MISS"
                used = sum(e.size for e in catalog.cached())
                on_disk = sum(p.stat().st_size for p in (settings.cache_root / "objects").rglob("*") if p.is_file())
                assert used <= quota and on_disk <= quota, (used, on_disk)
            # the last one is a hit now; the early ones were evicted and pass through again
            status, headers, _ = lab.get("/f5.bin")
            assert status == 200 and headers.get("x-cache") != "MISS"
            evicted = [e for e in catalog.all() if e.state == "evicted"]
            assert evicted and all(not (settings.cache_root / e.path).exists() for e in evicted)
            assert all(index.get(e.cache_key) is None for e in evicted)
            assert edge.counters["fill.evicted"] == len(evicted)
            # personalised: a request with a Cookie is answered but not stored
            cookie_key = f"http://origin.lab.test:{port}/f0.bin"
            if index.get(cookie_key) is None:
                status, _, body = lab.get("/f0.bin", headers={"Cookie": "session=1"})
                assert status == 200 and body == files["f0.bin"]
                assert index.get(cookie_key) is None and edge.counters["fill.skipped.cookie"] == 1
    finally:
        catalog.close()
        origin.stop()
