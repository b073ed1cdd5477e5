"""The edge's in-path fill goes through the cache store: filling past the quota evicts (files
gone, catalog rows marked, CacheEvent(evicted) applied to the index), the total stays under the
quota at every sample, clients always get whole answers, and an answer to a request with a Cookie
is not stored unless the origin says it is shared."""

from __future__ import annotations

import time
from pathlib import Path

from cachestore.catalog import Entry
from cachestore.paths import object_relpath
from heatcache.lab import NODE_IP, ORIGIN_IP, Origin, make_sample_files, shared_port
from heatcache.services.dnsmasq import Dnsmasq
from tests.cachestore.steered import steered_edge
from tests.dns_redirect.edgelab import EdgeLab, serving_edge


def test_fill_respects_the_quota(tmp_path: Path, dnsmasq: Dnsmasq) -> None:
    port = shared_port()
    names = {f"f{i}.bin": 100_000 for i in range(6)}
    files = make_sample_files(tmp_path / "www", {"seed.bin": 10_000, **names})
    origin = Origin(tmp_path / "www", ORIGIN_IP, port).start()
    quota = 330_000
    settings, seed_key, catalog, index, edge = steered_edge(
        tmp_path, dnsmasq, port, files["seed.bin"], cache_max_bytes=quota, cache_max_object_fraction=0.5)
    catalog.upsert(Entry(seed_key, seed_key, "origin.lab.test", object_relpath(seed_key), 10_000, "0" * 64,
                         "", "", "", "cached", 1.0))
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


def test_range_misses_fill_the_whole_object(tmp_path: Path, dnsmasq: Dnsmasq) -> None:
    """A player's sequence on never-seen objects of a steered host: `bytes=0-` is fetched whole
    once and stored as it passes (the client gets its 206), a seek is then a hit; a seek first
    passes through and the whole object is fetched once in the background."""
    port = shared_port()
    files = make_sample_files(tmp_path / "www", {"seed.bin": 1000, "video.bin": 400_000, "seek.bin": 300_000})
    origin = Origin(tmp_path / "www", ORIGIN_IP, port).start()
    settings, _, catalog, index, edge = steered_edge(tmp_path, dnsmasq, port, files["seed.bin"])
    lab = EdgeLab(port, edge, origin, files)
    video, seek = files["video.bin"], files["seek.bin"]
    try:
        with serving_edge(edge, NODE_IP, port):
            status, headers, body = lab.get("/video.bin", headers={"Range": "bytes=0-"})
            assert status == 206 and body == video and headers["x-cache"] == "MISS"
            assert headers["content-range"] == f"bytes 0-{len(video) - 1}/{len(video)}"
            assert index.get(f"http://origin.lab.test:{port}/video.bin") is not None  # stored before the last byte
            for _ in range(2):  # the player's sequence again, and a seek: hits
                status, headers, body = lab.get("/video.bin", headers={"Range": "bytes=0-"})
                assert status == 206 and body == video and headers["x-cache"] == "HIT"
                status, headers, body = lab.get("/video.bin", headers={"Range": "bytes=200000-299999"})
                assert status == 206 and body == video[200_000:300_000] and headers["x-cache"] == "HIT"
            assert origin.hits["/video.bin"] == 1  # asked once, for the whole object

            status, headers, body = lab.get("/seek.bin", headers={"Range": "bytes=100000-100999"})
            assert status == 206 and body == seek[100_000:101_000] and headers["x-cache"] == "MISS"
            seek_key = f"http://origin.lab.test:{port}/seek.bin"
            deadline = time.monotonic() + 30
            while index.get(seek_key) is None:
                assert time.monotonic() < deadline, dict(edge.counters)
                time.sleep(0.05)
            status, headers, body = lab.get("/seek.bin", headers={"Range": "bytes=100000-100999"})
            assert status == 206 and body == seek[100_000:101_000] and headers["x-cache"] == "HIT"
            assert origin.hits["/seek.bin"] == 2  # the client's range, then the whole object once
            stored = catalog.get(seek_key)
            assert stored is not None and (settings.cache_root / stored.path).read_bytes() == seek
    finally:
        catalog.close()
        origin.stop()
