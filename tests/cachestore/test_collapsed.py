"""Collapsed forwarding at the edge (dns_redirect/edge.py Edge.follow): while one miss of a key
fills the cache, concurrent misses of the same key (whole, a range, HEAD) are answered from the
fill's file as its bytes arrive; the origin is asked once, and every answer is byte-exact."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from pathlib import Path

from heatcache.lab import NODE_IP, ORIGIN_IP, Origin, make_sample_files, shared_port
from heatcache.services.dnsmasq import Dnsmasq
from tests.cachestore.steered import steered_edge
from tests.dns_redirect.edgelab import EdgeLab, serving_edge


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
    """The origin announces 400000 bytes and closes after 200000: the leader's copy is dropped,
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
    assert got["follower"] == body[:len(got["follower"])] and len(got["follower"]) == len(body)
    assert edge.counters["collapsed"] == 1 and edge.counters["collapse.cut"] == 1
    assert index.get(key) is None
