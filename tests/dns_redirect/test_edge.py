"""Integration tests for the edge HTTP server (dns_redirect/edge.py): a real aiohttp server on
the lab's node address, real HTTP clients, the lab origin for pass-through."""

from __future__ import annotations

import asyncio
import http.client
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from dns_redirect.edge import Edge
from dns_redirect.index import CacheIndex
from fetcher.catalog import Entry, open_catalog
from fetcher.paths import object_relpath
from heatcache.cachekey import KeyRules
from heatcache.contract import CacheEvent
from heatcache.lab import NODE_IP, ORIGIN_IP, Origin, make_sample_files, shared_port
from heatcache.services.dnsmasq import Dnsmasq
from heatcache.settings import load_settings


@dataclass
class EdgeLab:
    port: int
    edge: Edge
    origin: Origin
    files: dict[str, bytes]

    def get(self, path: str, host: str = "origin.lab.test", method: str = "GET",
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(NODE_IP, self.port, timeout=10)
        try:
            conn.request(method, path, headers={"Host": f"{host}:{self.port}", **(headers or {})})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()


def start_edge(edge: Edge, port: int) -> tuple[asyncio.AbstractEventLoop, web.AppRunner, threading.Thread]:
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(edge.app(), access_log=None)
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, NODE_IP, port).start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    return loop, runner, thread


def stop_edge(loop: asyncio.AbstractEventLoop, runner: web.AppRunner, thread: threading.Thread) -> None:
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    asyncio.run_coroutine_threadsafe(asyncio.sleep(0.2), loop).result(5)  # let closing transports finish
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


@pytest.fixture
def lab(tmp_path: Path, dnsmasq: Dnsmasq) -> Iterator[EdgeLab]:
    port = shared_port()
    files = make_sample_files(tmp_path / "www", {"cached.bin": 300_000, "passed.bin": 200_000})
    origin = Origin(tmp_path / "www", ORIGIN_IP, port).start()
    settings = load_settings(state_dir=tmp_path / "state", upstream_dns=(dnsmasq.upstream,), node_address=NODE_IP,
                             allow_private_origins=True, outbound_address=NODE_IP, purge_token="s3cret")
    key = f"http://origin.lab.test:{port}/cached.bin"
    rel = object_relpath(key)
    path = settings.cache_root / rel
    path.parent.mkdir(parents=True)
    path.write_bytes(files["cached.bin"])
    index = CacheIndex()
    index.apply(CacheEvent(key, "cached", path=rel, size=len(files["cached.bin"]), content_type="video/mp4"))
    index.apply(CacheEvent(f"http://internal.lab.test:{port}/x", "cached", path="objects/00/x"))
    index.apply(CacheEvent(f"http://escape.lab.test:{port}/x", "cached", path="../../../../etc/passwd"))
    catalog = open_catalog(settings.catalog)
    catalog.upsert(Entry(key, key, "origin.lab.test", rel, 300_000, "0" * 64, "", "", "video/mp4", "cached", 1.0))
    edge = Edge(settings, index, KeyRules.load(), catalog, hit_flush_s=3600)  # flushed by hand in tests
    running = start_edge(edge, port)
    yield EdgeLab(port, edge, origin, files)
    stop_edge(*running)
    catalog.close()
    origin.stop()


def test_hit_is_served_from_disk(lab: EdgeLab) -> None:
    status, headers, body = lab.get("/cached.bin?utm_source=mail")
    assert status == 200 and body == lab.files["cached.bin"]
    assert headers["x-cache"] == "HIT" and headers["content-type"] == "video/mp4"
    assert lab.origin.hits == {}


def test_range_head_and_conditional(lab: EdgeLab) -> None:
    status, headers, body = lab.get("/cached.bin", headers={"Range": "bytes=100-199"})
    assert status == 206 and body == lab.files["cached.bin"][100:200]
    assert headers["content-range"] == f"bytes 100-199/{len(lab.files['cached.bin'])}"
    status, headers, body = lab.get("/cached.bin", method="HEAD")
    assert status == 200 and body == b"" and headers["content-length"] == str(len(lab.files["cached.bin"]))
    status, _, _ = lab.get("/cached.bin", headers={"If-None-Match": headers["etag"]})
    assert status == 304
    assert lab.origin.hits == {}


def test_miss_passes_through_to_the_origin(lab: EdgeLab) -> None:
    status, headers, body = lab.get("/passed.bin")
    assert status == 200 and headers["x-cache"] == "MISS" and body == lab.files["passed.bin"]
    assert lab.origin.hits["/passed.bin"] == 1
    status, _, _ = lab.get("/missing.bin")
    assert status == 404
    assert lab.edge.counters["hits"] == 0 and lab.edge.counters["misses"] == 2


def test_hostile_requests_are_refused(lab: EdgeLab) -> None:
    assert lab.get("/x", host="not-steered.test")[0] == 421
    assert lab.get("/x", host="bad host")[0] == 400
    assert lab.get("/x", method="POST")[0] == 405
    assert lab.get("/x", headers={"Via": "1.1 heatcache"})[0] == 508
    assert lab.get("/x", host="escape.lab.test")[0] in (404, 502)  # catalog path escaping the root: not served
    assert lab.origin.hits["/x"] <= 1


def test_internal_origin_refused_when_private_not_allowed(tmp_path: Path, dnsmasq: Dnsmasq) -> None:
    port = shared_port()
    settings = load_settings(state_dir=tmp_path, upstream_dns=(dnsmasq.upstream,), node_address=NODE_IP)
    index = CacheIndex()
    index.apply(CacheEvent(f"http://internal.lab.test:{port}/a", "cached", path="objects/00/a"))
    index.apply(CacheEvent(f"http://origin.lab.test:{port}/a", "cached", path="objects/00/b"))
    running = start_edge(Edge(settings, index, KeyRules.load()), port)
    try:
        lab = EdgeLab(port, None, None, {})  # type: ignore[arg-type]
        assert lab.get("/other", host="internal.lab.test")[0] == 403  # 10.1.2.3
        assert lab.get("/other", host="origin.lab.test")[0] == 403  # 127.0.0.2
    finally:
        stop_edge(*running)


def post_purge(lab: EdgeLab, body: bytes, token: str | None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(NODE_IP, lab.port, timeout=10)
    try:
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        conn.request("POST", "/.heatcache/purge", body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_purge_is_authenticated_and_removes_the_object(lab: EdgeLab) -> None:
    url = f'{{"url": "http://origin.lab.test:{lab.port}/cached.bin"}}'.encode()
    assert post_purge(lab, url, None)[0] == 401
    assert post_purge(lab, url, "wrong")[0] == 401
    assert post_purge(lab, b"not json", "s3cret")[0] == 400
    assert lab.get("/cached.bin")[1]["x-cache"] == "HIT"
    status, body = post_purge(lab, url, "s3cret")
    assert status == 200 and b'"purged":true' in body.replace(b" ", b"")
    status, headers, data = lab.get("/cached.bin")
    assert headers["x-cache"] == "MISS" and data == lab.files["cached.bin"] and lab.origin.hits["/cached.bin"] == 1
    # that miss stored the object again as it passed; a second purge removes it again
    assert post_purge(lab, url, "s3cret")[0] == 200
    assert post_purge(lab, url, "s3cret")[0] == 404
    assert lab.edge.catalog is not None
    row = lab.edge.catalog.get(f"http://origin.lab.test:{lab.port}/cached.bin")
    assert row is not None and row.state == "purged"


def test_hits_are_booked_in_batches(lab: EdgeLab) -> None:
    for _ in range(3):
        assert lab.get("/cached.bin")[1]["x-cache"] == "HIT"
    key = f"http://origin.lab.test:{lab.port}/cached.bin"
    assert lab.edge.pending_hits[key][0] == 3
    assert lab.edge.catalog is not None
    row = lab.edge.catalog.get(key)
    assert row is not None and row.hits == 0  # not yet: bookkeeping is batched
    asyncio.run(lab.edge.flush_hits())
    row = lab.edge.catalog.get(key)
    assert row is not None and row.hits == 3 and row.last_hit > 0 and lab.edge.pending_hits == {}


def test_misses_are_stored_as_they_pass(lab: EdgeLab) -> None:
    status, headers, body = lab.get("/passed.bin")
    assert headers["x-cache"] == "MISS" and body == lab.files["passed.bin"]
    status, headers, body = lab.get("/passed.bin?utm_source=again")  # same cache key
    assert status == 200 and headers["x-cache"] == "HIT" and body == lab.files["passed.bin"]
    assert lab.origin.hits["/passed.bin"] == 1  # the bytes crossed the uplink once
    key = f"http://origin.lab.test:{lab.port}/passed.bin"
    assert lab.edge.catalog is not None
    row = lab.edge.catalog.get(key)
    assert row is not None and row.size == len(lab.files["passed.bin"]) and row.state == "cached"
    # ranges, HEADs and errors pass through without being stored
    assert lab.get("/missing.bin")[0] == 404
    lab.get("/cached.bin", host="origin.lab.test")  # a hit, nothing to store
    c = lab.edge.counters
    assert c["fill.stored"] == 1 and c["fill.skipped.status"] == 1
    assert not any((lab.edge.root / "tmp").iterdir())


def test_fill_decisions() -> None:
    from dns_redirect.hits import may_fill

    ok = {"Content-Length": "10", "Content-Type": "video/mp4"}
    assert may_fill("GET", {}, 200, ok, 100) == ""
    assert may_fill("HEAD", {}, 200, ok, 100) == "method"
    assert may_fill("GET", {"Range": "bytes=0-1"}, 200, ok, 100) == "request"
    assert may_fill("GET", {}, 206, ok, 100) == "status"
    assert may_fill("GET", {}, 200, {**ok, "Set-Cookie": "a=b"}, 100) == "cookie"
    assert may_fill("GET", {}, 200, {**ok, "Cache-Control": "private, max-age=5"}, 100) == "cache-control"
    assert may_fill("GET", {}, 200, {**ok, "Content-Encoding": "gzip"}, 100) == "encoded"
    assert may_fill("GET", {}, 200, {**ok, "Vary": "Cookie"}, 100) == "vary"
    assert may_fill("GET", {}, 200, {**ok, "Vary": "Accept-Encoding"}, 100) == ""
    assert may_fill("GET", {}, 200, ok, 5) == "size"
