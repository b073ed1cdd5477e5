"""Integration tests for nginx in front of the edge (X-Accel-Redirect): real nginx from Debian
with the config ``heatcache nginx-conf`` prints, real HTTP clients."""

from __future__ import annotations

import socket

from heatcache.lab import NODE_IP
from tests.dns_redirect.edgelab import EdgeLab


def test_hits_are_sent_by_nginx_and_misses_stream_through(nginx_lab: EdgeLab) -> None:
    lab = nginx_lab
    status, headers, body = lab.get("/cached.bin?utm_source=mail")
    assert status == 200 and body == lab.files["cached.bin"]
    assert headers["x-cache"] == "HIT" and headers["content-type"] == "video/mp4"
    assert headers["server"].startswith("nginx") and "x-accel-redirect" not in headers
    status, headers, body = lab.get("/cached.bin", headers={"Range": "bytes=100-199"})
    assert status == 206 and body == lab.files["cached.bin"][100:200]
    status, headers, body = lab.get("/passed.bin")
    assert status == 200 and headers["x-cache"] == "MISS" and body == lab.files["passed.bin"]
    assert lab.origin.hits == {"/passed.bin": 1}
    assert lab.edge.counters["hits"] == 2  # the edge decided both hits; nginx sent the bytes
    assert lab.get("/x", host="not-steered.test")[0] == 421


def test_the_internal_location_is_not_reachable_from_outside(nginx_lab: EdgeLab) -> None:
    entry = nginx_lab.edge.index.get(f"http://origin.lab.test:{nginx_lab.port}/cached.bin")
    assert entry is not None
    with socket.create_connection((NODE_IP, nginx_lab.port), timeout=10) as sock:
        sock.sendall(f"GET /.heatcache/cache/{entry.path} HTTP/1.1\r\nHost: origin.lab.test:{nginx_lab.port}\r\n"
                     "Connection: close\r\n\r\n".encode())
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    # nginx hands the URL to the edge like any other: a miss for the origin, never the file
    assert nginx_lab.files["cached.bin"] not in reply
