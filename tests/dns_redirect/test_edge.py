"""Integration tests for the edge HTTP server (dns_redirect/edge.py): a real aiohttp server on
the lab's node address, real HTTP clients, the lab origin for pass-through."""

from __future__ import annotations

import asyncio
import http.client
import subprocess
from pathlib import Path

from dns_redirect.edge import Edge
from dns_redirect.index import CacheIndex
from heatcache.cachekey import KeyRules
from heatcache.contract import CacheEvent
from heatcache.lab import NODE_IP, ORIGIN_IP, Origin, make_sample_files, shared_port
from heatcache.services.dnsmasq import Dnsmasq
from heatcache.settings import load_settings
from tests.dns_redirect.edgelab import ORIGIN_ETAG, ORIGIN_LM, EdgeLab, serving_edge


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


def test_preconditions_with_the_origins_validators(lab: EdgeLab) -> None:
    """RFC 9110 preconditions against the origin's ETag/Last-Modified, on both hit paths (the
    front answers plain GETs; a GET with a Content-Length goes to aiohttp's handler)."""
    body = lab.files["cached.bin"]
    for extra in ({}, {"Content-Length": "0"}):
        status, headers, _ = lab.get("/cached.bin", headers=extra)
        assert status == 200 and headers["etag"] == ORIGIN_ETAG and headers["last-modified"] == ORIGIN_LM
        assert lab.get("/cached.bin", headers={**extra, "If-None-Match": ORIGIN_ETAG})[0] == 304
        assert lab.get("/cached.bin", headers={**extra, "If-Match": '"other"'})[0] == 412
        assert lab.get("/cached.bin", headers={**extra, "If-Match": ORIGIN_ETAG})[0] == 200
        assert lab.get("/cached.bin", headers={**extra, "If-Unmodified-Since": "Sun, 22 Nov 2026 08:00:00 GMT"}
                       )[0] == 412
        status, _, got = lab.get("/cached.bin", headers={**extra, "Range": "bytes=0-9", "If-Range": ORIGIN_LM})
        assert status == 206 and got == body[:10]
        status, _, got = lab.get("/cached.bin", headers={**extra, "Range": "bytes=0-9",
                                                         "If-Range": "Tue, 24 Nov 2026 08:00:00 GMT"})
        assert status == 200 and got == body
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
    assert lab.get("/x", method="TRACE")[0] == 405
    assert lab.get("/x", method="CONNECT")[0] in (400, 404, 405)  # never tunnelled (aiohttp may refuse first)
    assert lab.get("/x", headers={"Via": "1.1 heatcache"})[0] == 508
    assert lab.get("/x", host="escape.lab.test")[0] in (404, 502)  # catalog path escaping the root: not served
    assert lab.origin.hits["/x"] <= 1


def test_writes_to_a_steered_host_reach_its_origin(lab: EdgeLab) -> None:
    """Steering must not break a site: a POST passes through with its body, and is never stored."""
    conn = http.client.HTTPConnection(NODE_IP, lab.port, timeout=10)
    try:
        body = b"form=1&" * 20_000
        conn.request("POST", "/submit", body=body, headers={"Host": f"origin.lab.test:{lab.port}"})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == body and resp.getheader("X-Cache") == "MISS"
    finally:
        conn.close()
    assert lab.origin.hits["POST /submit"] == 1 and lab.edge.counters["fill.stored"] == 0


def test_redirects_are_passed_to_the_client_never_followed(lab: EdgeLab, tmp_path: Path) -> None:
    """An origin that redirects inwards (issue 15): the 3xx reaches the client as it came; the
    node fetches no hop of the chain (an inward server would have counted a request)."""
    inward = Origin(tmp_path, "127.0.0.1").start()
    try:
        (tmp_path / "secret").write_bytes(b"internal")
        status, headers, body = lab.get(f"/__redirect/{inward.port}")
        assert status == 302 and headers["location"] == f"http://127.0.0.1:{inward.port}/secret"
        assert body == b"" and inward.hits == {} and lab.edge.counters["fill.stored"] == 0
        assert lab.get(f"/__redirect/{inward.port}")[0] == 302  # and it is not stored either
    finally:
        inward.stop()


def test_internal_origin_refused_when_private_not_allowed(tmp_path: Path, dnsmasq: Dnsmasq) -> None:
    port = shared_port()
    settings = load_settings(state_dir=tmp_path, upstream_dns=(dnsmasq.upstream,), node_address=NODE_IP)
    index = CacheIndex()
    index.apply(CacheEvent(f"http://internal.lab.test:{port}/a", "cached", path="objects/00/a"))
    index.apply(CacheEvent(f"http://origin.lab.test:{port}/a", "cached", path="objects/00/b"))
    with serving_edge(Edge(settings, index, KeyRules.load()), NODE_IP, port):
        lab = EdgeLab(port, None, None, {})  # type: ignore[arg-type]
        assert lab.get("/other", host="internal.lab.test")[0] == 403  # 10.1.2.3
        assert lab.get("/other", host="origin.lab.test")[0] == 403  # 127.0.0.2


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


def test_a_full_disk_while_filling_keeps_the_clients_answer_whole(tmp_path: Path, dnsmasq: Dnsmasq) -> None:
    """ENOSPC in the in-path store (issue 15): the copy is dropped, the client gets every byte."""
    port = shared_port()
    files = make_sample_files(tmp_path / "www", {"big.bin": 2_000_000})
    cache = tmp_path / "cache"
    cache.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(cache)], check=True)
    origin = Origin(tmp_path / "www", ORIGIN_IP, port).start()
    try:
        settings = load_settings(state_dir=tmp_path / "state", cache_dir=cache, upstream_dns=(dnsmasq.upstream,),
                                 node_address=NODE_IP, allow_private_origins=True, outbound_address=NODE_IP)
        index = CacheIndex()
        index.apply(CacheEvent(f"http://origin.lab.test:{port}/other", "cached", path="objects/00/o"))
        edge = Edge(settings, index, KeyRules.load())
        with serving_edge(edge, NODE_IP, port):
            lab = EdgeLab(port, edge, origin, files)
            for _ in range(2):
                status, headers, body = lab.get("/big.bin")
                assert status == 200 and headers["x-cache"] == "MISS" and body == files["big.bin"]
            assert edge.counters["fill.failed.disk"] == 2 and edge.counters["fill.stored"] == 0
            assert not any((cache / "tmp").iterdir())  # the partial copies are gone
    finally:
        origin.stop()
        subprocess.run(["umount", str(cache)], check=True)
