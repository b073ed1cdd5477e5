"""Integration tests for the edge's hit front (dns_redirect/front.py) on raw sockets: keep-alive,
pipelining, hand-off of the rest of a connection to aiohttp, bodies larger than the socket
buffer, clients that hang up, and objects that change under open descriptors."""

from __future__ import annotations

import asyncio
import socket
import time

from cachestore.paths import object_relpath
from heatcache.contract import CacheEvent
from heatcache.lab import NODE_IP
from tests.dns_redirect.edgelab import EdgeLab


def connect(lab: EdgeLab) -> socket.socket:
    return socket.create_connection((NODE_IP, lab.port), timeout=10)


def request(lab: EdgeLab, path: str, method: str = "GET", extra: str = "", version: str = "1.1") -> bytes:
    return f"{method} {path} HTTP/{version}\r\nHost: origin.lab.test:{lab.port}\r\n{extra}\r\n".encode()


def read_response(sock: socket.socket, buf: bytearray, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """One response off a keep-alive connection (Content-Length framed, as the edge frames hits)."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before a full head"
        buf += chunk
    end = buf.index(b"\r\n\r\n")
    lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    del buf[:end + 4]
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = 0 if method == "HEAD" or status == 304 else int(headers.get("content-length", "0"))
    while len(buf) < length:
        chunk = sock.recv(1 << 20)
        assert chunk, "connection closed mid-body"
        buf += chunk
    body = bytes(buf[:length])
    del buf[:length]
    return status, headers, body


def test_keep_alive_hits_and_pipelining(lab: EdgeLab) -> None:
    with connect(lab) as sock:
        buf = bytearray()
        for _ in range(3):
            sock.sendall(request(lab, "/cached.bin"))
            status, headers, body = read_response(sock, buf)
            assert status == 200 and headers["x-cache"] == "HIT" and body == lab.files["cached.bin"]
        # three requests in one segment: answered in order
        sock.sendall(request(lab, "/cached.bin", extra="Range: bytes=0-9\r\n") + request(lab, "/cached.bin", "HEAD")
                     + request(lab, "/cached.bin", extra="Range: bytes=10-19\r\n"))
        assert read_response(sock, buf)[2] == lab.files["cached.bin"][:10]
        status, headers, body = read_response(sock, buf, "HEAD")
        assert status == 200 and body == b"" and headers["content-length"] == str(len(lab.files["cached.bin"]))
        assert read_response(sock, buf)[2] == lab.files["cached.bin"][10:20]
    assert lab.edge.counters["hits"] == 6 and lab.origin.hits == {}


def test_a_miss_hands_the_connection_to_aiohttp(lab: EdgeLab) -> None:
    """Hit, then a miss and a hit pipelined behind it: aiohttp gets every byte not yet answered."""
    with connect(lab) as sock:
        buf = bytearray()
        sock.sendall(request(lab, "/cached.bin"))
        assert read_response(sock, buf)[1]["x-cache"] == "HIT"
        sock.sendall(request(lab, "/passed.bin") + request(lab, "/cached.bin", extra="Range: bytes=5-9\r\n"))
        status, headers, body = read_response(sock, buf)
        assert status == 200 and headers["x-cache"] == "MISS" and body == lab.files["passed.bin"]
        status, headers, body = read_response(sock, buf)
        assert status == 206 and headers["x-cache"] == "HIT" and body == lab.files["cached.bin"][5:10]
    assert lab.origin.hits == {"/passed.bin": 1} and lab.edge.counters["front.handed-off"] == 1


def test_malformed_and_unusual_requests_get_the_full_servers_answer(lab: EdgeLab) -> None:
    cases = [
        (b"GET /cached.bin HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n", 400),
        (b"GET /cached.bin HTTP/1.1\r\nHost : origin.lab.test\r\n\r\n", 400),
        (b"GET /cached.bin HTTP/1.1\r\n\r\n", 400),
        (f"GET /x HTTP/1.1\r\nHost: origin.lab.test:{lab.port}\r\nVia: 1.1 heatcache\r\n\r\n".encode(), 508),
        (b"GET /x HTTP/1.1\r\nHost: elsewhere.test\r\n\r\n", 421),
        (f"GET /cached.bin HTTP/1.1\r\nHost: origin.lab.test:{lab.port}\r\nContent-Length: 3\r\n\r\nabc".encode(), 200),
    ]
    for raw, expected in cases:
        with connect(lab) as sock:
            sock.sendall(raw)
            status, _, _ = read_response(sock, bytearray())
            assert status == expected, raw


def test_http10_and_connection_close_end_the_connection(lab: EdgeLab) -> None:
    for raw in (request(lab, "/cached.bin", version="1.0"), request(lab, "/cached.bin", extra="Connection: close\r\n")):
        with connect(lab) as sock:
            sock.sendall(raw)
            buf = bytearray()
            status, _, body = read_response(sock, buf)
            assert status == 200 and body == lab.files["cached.bin"]
            assert sock.recv(1) == b""  # closed by the edge


def test_a_body_larger_than_the_socket_buffer_to_a_slow_reader(lab: EdgeLab) -> None:
    """The front sends what fits, then the rest as the client makes room; requests behind it
    wait their turn."""
    big = bytes(range(256)) * (48 * 1024)  # 12 MiB
    key = f"http://origin.lab.test:{lab.port}/big.bin"
    rel = object_relpath(key)
    (lab.edge.root / rel).parent.mkdir(parents=True, exist_ok=True)
    (lab.edge.root / rel).write_bytes(big)
    lab.edge.index.apply(CacheEvent(key, "cached", path=rel, size=len(big)))
    with connect(lab) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(request(lab, "/big.bin") + request(lab, "/cached.bin", extra="Range: bytes=0-3\r\n"))
        time.sleep(0.3)  # the edge fills the socket and waits
        buf = bytearray()
        status, _, body = read_response(sock, buf)
        assert status == 200 and body == big
        assert read_response(sock, buf)[2] == lab.files["cached.bin"][:4]
    assert lab.edge.counters["front.deferred"] >= 1 and lab.edge.counters["front.handed-off"] == 0


def test_clients_that_hang_up_mid_body_do_not_hurt_the_edge(lab: EdgeLab) -> None:
    big = b"z" * (16 << 20)
    key = f"http://origin.lab.test:{lab.port}/gone.bin"
    rel = object_relpath(key)
    (lab.edge.root / rel).parent.mkdir(parents=True, exist_ok=True)
    (lab.edge.root / rel).write_bytes(big)
    lab.edge.index.apply(CacheEvent(key, "cached", path=rel, size=len(big)))
    for _ in range(5):
        sock = connect(lab)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        sock.sendall(request(lab, "/gone.bin"))
        sock.recv(1000)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
        sock.close()
    deadline = time.monotonic() + 5
    while lab.edge.counters["client-gone"] < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lab.edge.counters["client-gone"] == 5
    status, _, body = lab.get("/cached.bin")
    assert status == 200 and body == lab.files["cached.bin"]


def test_a_replaced_object_is_served_new_at_once(lab: EdgeLab) -> None:
    """Descriptors are kept open between hits; a change of the object (its CacheEvent) drops them."""
    key = f"http://origin.lab.test:{lab.port}/cached.bin"
    assert lab.get("/cached.bin")[2] == lab.files["cached.bin"]
    entry = lab.edge.index.get(key)
    assert entry is not None
    path = lab.edge.root / entry.path
    fresh = path.with_name("fresh")
    fresh.write_bytes(b"new copy")
    fresh.replace(path)  # as the fetcher stores: atomic rename over the old file
    lab.edge.index.apply(CacheEvent(key, "cached", path=entry.path, size=8, content_type="video/mp4"))
    assert lab.get("/cached.bin")[2] == b"new copy"
    lab.edge.index.apply(CacheEvent(key, "purged"))
    _, headers, body = lab.get("/cached.bin")
    assert headers["x-cache"] == "MISS" and body == lab.files["cached.bin"]  # from the origin again


def test_stop_closes_idle_front_connections(lab: EdgeLab) -> None:
    sock = connect(lab)
    try:
        sock.sendall(request(lab, "/cached.bin"))
        read_response(sock, bytearray())
        assert lab.edge._listener is not None
        loop = lab.edge._listener.get_loop()  # the lab's edge runs on its own thread
        asyncio.run_coroutine_threadsafe(lab.edge.stop(), loop).result(10)
        sock.settimeout(5)
        assert sock.recv(1) == b""
        try:
            connect(lab).close()
            raise AssertionError("the edge still accepts connections after stop()")
        except ConnectionRefusedError:
            pass
    finally:
        sock.close()


def test_a_pipelining_client_that_reads_late_gets_every_answer_intact(lab: EdgeLab) -> None:
    """Forty answers (12 MB) pipelined to a client that does not read at first: every answer
    leaves whole and in order although the socket fills up mid-body many times."""
    with connect(lab) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        n = 40
        sock.sendall(b"".join(request(lab, "/cached.bin", "HEAD" if i % 3 == 2 else "GET") for i in range(n)))
        time.sleep(0.5)  # nobody reads: the edge's socket fills up mid-answer
        buf = bytearray()
        for i in range(n):
            method = "HEAD" if i % 3 == 2 else "GET"
            status, _, body = read_response(sock, buf, method)
            assert status == 200 and body == (b"" if method == "HEAD" else lab.files["cached.bin"]), i
    assert lab.edge.counters["hits"] == n
