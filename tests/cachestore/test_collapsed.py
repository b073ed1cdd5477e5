"""Collapsed forwarding at the edge (dns_redirect/edge.py Edge.follow): while one miss of a key
fills the cache, concurrent misses of the same key (whole, a range, HEAD) are answered from the
fill's file as its bytes arrive; the origin is asked once, and every answer is byte-exact."""

from __future__ import annotations

import hashlib
import http.client
import socket
import threading
import time
from pathlib import Path

from dns_redirect.edge import Edge
from heatcache.lab import NODE_IP, ORIGIN_IP, Origin, make_sample_files, shared_port
from heatcache.services.dnsmasq import Dnsmasq
from tests.cachestore.steered import steered_edge
from tests.dns_redirect.edgelab import EdgeLab, serving_edge
from tests.fetcher.origin import Route, TestOrigin


def test_concurrent_misses_of_one_key_ask_the_origin_once(tmp_path: Path, dnsmasq: Dnsmasq) -> None:
    port = shared_port()
    files = make_sample_files(tmp_path / "www", {"seed.bin": 1000, "video.bin": 600_000})
    origin = Origin(tmp_path / "www", ORIGIN_IP, port, rate_bps=600_000).start()  # ~1 s: the others overlap it
    _, _, catalog, index, edge = steered_edge(tmp_path, dnsmasq, port, files["seed.bin"])
    lab = EdgeLab(port, edge, origin, files)
    video = files["video.bin"]
    key = f"http://origin.lab.test:{port}/video.bin"
    answers: dict[str, tuple[int, dict[str, str], bytes]] = {}

    def ask(name: str, method: str = "GET", **headers: str) -> None:
        answers[name] = lab.get("/video.bin", method=method, headers=headers)

    try:
        with serving_edge(edge, NODE_IP, port):
            leader = threading.Thread(target=ask, args=("leader",), kwargs={"Range": "bytes=0-"})
            leader.start()
            deadline = time.monotonic() + 30
            while key not in edge._shared:  # the leader's fill has begun
                assert time.monotonic() < deadline and leader.is_alive(), answers
                time.sleep(0.01)
            followers = [threading.Thread(target=ask, args=("whole",)),
                         threading.Thread(target=ask, args=("seek",), kwargs={"Range": "bytes=300000-399999"}),
                         threading.Thread(target=ask, args=("head", "HEAD"))]
            for t in followers:
                t.start()
            for t in [leader, *followers]:
                t.join(30)
    finally:
        catalog.close()
        origin.stop()
    status, headers, body = answers["leader"]
    assert status == 206 and body == video and headers["x-cache"] == "MISS"
    status, headers, body = answers["whole"]
    assert status == 200 and body == video and headers["x-cache"] == "COLLAPSED"
    assert headers["content-length"] == str(len(video)) and headers["etag"] == answers["leader"][1]["etag"]
    status, headers, body = answers["seek"]
    assert status == 206 and body == video[300_000:400_000] and headers["x-cache"] == "COLLAPSED"
    assert headers["content-range"] == f"bytes 300000-399999/{len(video)}"
    status, headers, body = answers["head"]
    assert status == 200 and body == b"" and headers["content-length"] == str(len(video))
    assert origin.hits["/video.bin"] == 1  # one origin fetch for all four
    assert edge.counters["collapsed"] == 3 and not edge._shared
    assert index.get(key) is not None


def test_a_follower_of_a_fill_that_ends_short_is_cut_not_padded(tmp_path: Path, dnsmasq: Dnsmasq) -> None:
    """The origin announces 400000 bytes and closes after 204800: the leader's copy is dropped,
    and a follower gets only true bytes and a connection closed before its Content-Length."""
    port = shared_port()
    served = threading.Event()
    body = bytes(range(256)) * 800  # 204800 bytes sent of the 400000 announced
    listener = socket.create_server((ORIGIN_IP, port))
    gets: list[str] = []

    def lying_origin() -> None:
        while not served.is_set():
            listener.settimeout(0.2)
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                head = b""
                while b"\r\n\r\n" not in head:
                    head += conn.recv(4096)
                gets.append(head.split(b" ")[1].decode())
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 400000\r\nContent-Type: video/mp4\r\n"
                             b"ETag: \"s\"\r\nConnection: close\r\n\r\n")
                for i in range(0, len(body), 20480):
                    conn.sendall(body[i:i + 20480])
                    time.sleep(0.05)  # pacing the link, not synchronizing

    origin = threading.Thread(target=lying_origin, daemon=True)
    origin.start()
    _, _, catalog, index, edge = steered_edge(tmp_path, dnsmasq, port, b"s" * 100)
    key = f"http://origin.lab.test:{port}/short.bin"
    got: dict[str, bytes] = {}

    def ask(name: str) -> None:
        conn = http.client.HTTPConnection(NODE_IP, port, timeout=30)
        try:
            conn.request("GET", "/short.bin", headers={"Host": f"origin.lab.test:{port}"})
            resp = conn.getresponse()
            assert resp.status == 200 and resp.headers["Content-Length"] == "400000"
            try:
                got[name] = resp.read()
            except http.client.IncompleteRead as exc:
                got[name] = exc.partial
        finally:
            conn.close()

    try:
        with serving_edge(edge, NODE_IP, port):
            leader = threading.Thread(target=ask, args=("leader",))
            leader.start()
            deadline = time.monotonic() + 30
            while key not in edge._shared:
                assert time.monotonic() < deadline and leader.is_alive()
                time.sleep(0.01)
            ask("follower")
            leader.join(30)
        assert catalog.get(key) is None  # nothing short is ever stored
    finally:
        served.set()
        origin.join(5)
        listener.close()
        catalog.close()
    assert gets == ["/short.bin"]  # the follower did not ask the origin
    # true bytes only, short of the Content-Length (its last piece waits for a whole body that never came)
    assert got["follower"] == body[:len(got["follower"])] and 0 < len(got["follower"]) < len(body)
    assert edge.counters["collapsed"] == 1 and edge.counters["collapse.cut"] == 1
    assert index.get(key) is None


Answer = tuple[int, dict[str, str], bytes, bool]


def _ask(port: int, path: str, method: str = "GET", **headers: str) -> Answer:
    """-> (status, headers, body, complete): a real client; ``complete`` is False when the body
    ended early (http.client saw no final chunk or fewer bytes than the Content-Length)."""
    conn = http.client.HTTPConnection(NODE_IP, port, timeout=30)
    try:
        conn.request(method, path, headers={"Host": f"origin.lab.test:{port}", **headers})
        resp = conn.getresponse()
        try:
            body, complete = resp.read(), True
        except http.client.IncompleteRead as exc:
            body, complete = exc.partial, False
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body, complete
    finally:
        conn.close()


def _lead_and_follow(port: int, edge: Edge, key: str, path: str, followers: dict[str, tuple[str, dict[str, str]]],
                     before_headers: bool = False) -> dict[str, Answer]:
    """A plain GET leads the fill; once it runs (``before_headers``: once it waits for the
    origin's headers), each follower (method, headers) asks at once."""
    answers: dict[str, Answer] = {}

    def ask(name: str, method: str, headers: dict[str, str]) -> None:
        answers[name] = _ask(port, path, method, **headers)

    leader = threading.Thread(target=ask, args=("leader", "GET", {}))
    leader.start()
    deadline = time.monotonic() + 30
    while key not in (edge._asking if before_headers else edge._shared):  # the leader asked / its fill began
        assert time.monotonic() < deadline and leader.is_alive(), answers
        time.sleep(0.01)
    threads = [threading.Thread(target=ask, args=(name, m, hs)) for name, (m, hs) in followers.items()]
    for t in threads:
        t.start()
    for t in [leader, *threads]:
        t.join(30)
    return answers


LM = "Mon, 23 Nov 2026 08:00:00 GMT"


def test_a_chunked_fill_is_followed_and_answers_conditionals(tmp_path: Path, dnsmasq: Dnsmasq) -> None:
    """The origin thinks 0.5 s, then sends 600 kB chunked (no Content-Length) over ~1 s; the
    followers arrive before its headers and wait for them: whole-object followers get it chunked
    as it grows, ending with the stored copy; a closed range waits for its bytes; an open range
    past 0 passes through; conditionals are answered from the fill's validators."""
    port = shared_port()
    body = hashlib.sha256(b"x").digest() * 18750  # 600000 bytes
    origin = TestOrigin(ORIGIN_IP, port)
    origin.routes["/v.bin"] = Route(body, rate=600_000, transfer_chunked=True, delay=0.5,
                                    headers={"ETag": '"v1"', "Last-Modified": LM, "Content-Type": "video/mp4"})
    origin.start()
    _, _, catalog, index, edge = steered_edge(tmp_path, dnsmasq, port, b"s" * 100)
    key = f"http://origin.lab.test:{port}/v.bin"
    try:
        with serving_edge(edge, NODE_IP, port):
            got = _lead_and_follow(port, edge, key, "/v.bin", {
                "whole": ("GET", {}), "zero": ("GET", {"Range": "bytes=0-"}), "head": ("HEAD", {}),
                "closed": ("GET", {"Range": "bytes=500000-549999"}), "open": ("GET", {"Range": "bytes=300000-"}),
                "inm": ("GET", {"If-None-Match": 'W/"v1"'}), "ims": ("GET", {"If-Modified-Since": LM}),
                "if-match": ("GET", {"If-Match": '"v0"'}),
                "ius": ("GET", {"If-Unmodified-Since": "Sun, 22 Nov 2026 08:00:00 GMT"}),
                "if-range-old": ("GET", {"Range": "bytes=0-99", "If-Range": '"v0"'}),
                "if-range-ok": ("GET", {"Range": "bytes=10-19", "If-Range": '"v1"'})}, before_headers=True)
        stored = catalog.get(key)
    finally:
        catalog.close()
        origin.stop()
    status, headers, data, complete = got["leader"]
    assert (status, data, complete, headers["x-cache"]) == (200, body, True, "MISS")
    for name in ("whole", "zero", "if-range-old"):  # 200, chunked, the whole object
        status, headers, data, complete = got[name]
        assert (status, complete, headers["x-cache"], headers["etag"]) == (200, True, "COLLAPSED", '"v1"'), name
        assert data == body and headers["transfer-encoding"] == "chunked" and "content-length" not in headers, name
    status, headers, data, _ = got["head"]
    assert (status, data, headers["x-cache"], headers["last-modified"]) == (200, b"", "COLLAPSED", LM)
    status, headers, data, complete = got["closed"]
    assert (status, complete, headers["x-cache"]) == (206, True, "COLLAPSED") and data == body[500_000:550_000]
    assert headers["content-range"] in ("bytes 500000-549999/*", "bytes 500000-549999/600000")
    status, headers, data, complete = got["open"]  # needs the total: the origin answers it
    assert (status, complete, headers["x-cache"]) == (206, True, "MISS") and data == body[300_000:]
    for name, want in (("inm", 304), ("ims", 304), ("if-match", 412), ("ius", 412)):
        status, headers, data, _ = got[name]
        assert (status, data, headers["x-cache"], headers["etag"]) == (want, b"", "COLLAPSED", '"v1"'), name
    status, headers, data, _ = got["if-range-ok"]
    assert (status, data, headers["content-range"]) == (206, body[10:20], "bytes 10-19/*")
    assert origin.gets["/v.bin"] == 2 and origin.ranges["/v.bin"].count("bytes=300000-") == 1
    assert edge.counters["collapsed"] == 6 and edge.counters["collapse.conditional"] == 4
    assert edge.counters["collapse.passed"] == 1 and edge.counters["collapse.cut"] == 0
    assert stored is not None and stored.size == len(body) and stored.etag == '"v1"'
    assert stored.sha256 == hashlib.sha256(body).hexdigest() and index.get(key) is not None


def test_followers_of_a_chunked_fill_reset_mid_body_never_see_an_end(tmp_path: Path, dnsmasq: Dnsmasq) -> None:
    """The origin resets after 200 kB of a chunked body: nothing is stored, and every whole-object
    follower gets only true bytes and no final chunk (http.client: IncompleteRead); a closed range
    inside what arrived is whole and true."""
    port = shared_port()
    body = bytes(range(256)) * 1600  # 409600 bytes, cut at 200000
    origin = TestOrigin(ORIGIN_IP, port)
    origin.routes["/cut.bin"] = Route(body, rate=400_000, transfer_chunked=True, reset_at=200_000,
                                      headers={"ETag": '"c"', "Content-Type": "video/mp4"})
    origin.start()
    _, _, catalog, index, edge = steered_edge(tmp_path, dnsmasq, port, b"s" * 100)
    key = f"http://origin.lab.test:{port}/cut.bin"
    try:
        with serving_edge(edge, NODE_IP, port):
            got = _lead_and_follow(port, edge, key, "/cut.bin", {
                "whole": ("GET", {}), "zero": ("GET", {"Range": "bytes=0-"}),
                "early": ("GET", {"Range": "bytes=100000-109999"})})
        assert catalog.get(key) is None  # nothing short is ever stored
    finally:
        catalog.close()
        origin.stop()
    for name in ("leader", "whole", "zero"):
        status, _, data, complete = got[name]
        assert status == 200 and not complete, name
        assert len(data) <= 200_000 and data == body[:len(data)], name
    assert got["whole"][1]["x-cache"] == "COLLAPSED" and got["zero"][1]["x-cache"] == "COLLAPSED"
    status, headers, data, complete = got["early"]
    assert (status, complete, headers["x-cache"], data) == (206, True, "COLLAPSED", body[100_000:110_000])
    assert headers["content-range"] == "bytes 100000-109999/*"
    assert origin.gets["/cut.bin"] == 1  # the followers did not ask the origin
    assert edge.counters["collapsed"] == 3 and edge.counters["collapse.cut"] == 2
    assert index.get(key) is None and not edge._shared
