"""The policy proxy: request parsing/rewriting (pure) and one loopback round trip (a checked
request forwarded to the checked address, a refused one answered 403 and remembered per job)."""

from __future__ import annotations

import base64
import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fetcher.policyproxy import PolicyProxy, ProxyRefused, parse_request, response_head, upstream_head
from heatcache.safety import ForbiddenAddress


def _auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_parse_and_rewrite_an_absolute_request() -> None:
    head = (b"GET http://93.184.216.34:8080/a/b.bin?x=1 HTTP/1.1\r\nHost: origin.test\r\n"
            b"Proxy-Authorization: " + _auth("job1", "pw").encode() + b"\r\nProxy-Connection: Keep-Alive\r\n"
            b"Range: bytes=10-\r\n\r\n")
    req, password = parse_request(head)
    assert (req.method, req.host, req.port, req.target, req.user, password) == \
        ("GET", "93.184.216.34", 8080, "/a/b.bin?x=1", "job1", "pw")
    out = upstream_head(req).decode()
    assert out.startswith("GET /a/b.bin?x=1 HTTP/1.1\r\nHost: origin.test\r\nRange: bytes=10-\r\n")
    assert "Proxy-" not in out and out.endswith("Connection: close\r\n\r\n")
    connect, _ = parse_request(b"CONNECT [2001:db8::1]:443 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (connect.host, connect.port, connect.url) == ("2001:db8::1", 443, "https://[2001:db8::1]:443/")
    no_host, _ = parse_request(b"HEAD http://10.0.0.1/ HTTP/1.1\r\n\r\n")
    assert b"Host: 10.0.0.1\r\n" in upstream_head(no_host)


@pytest.mark.parametrize("head", [
    b"GET /relative HTTP/1.1\r\n\r\n",
    b"POST http://a.test/ HTTP/1.1\r\n\r\n",
    b"GET ftp://a.test/ HTTP/1.1\r\n\r\n",
    b"GET http://u:p@a.test/ HTTP/1.1\r\n\r\n",
    b"GET http://a.test:99999/ HTTP/1.1\r\n\r\n",
    b"CONNECT a.test HTTP/1.1\r\n\r\n",
    b"GET http://a.test/ SPDY/3\r\n\r\n",
])
def test_what_is_not_forwarded(head: bytes) -> None:
    with pytest.raises(ProxyRefused):
        parse_request(head)


def test_response_head_closes() -> None:
    out = response_head(b"HTTP/1.1 302 Found\r\nLocation: http://x/\r\nConnection: keep-alive\r\nKeep-Alive: 5\r\n\r\n")
    assert out == b"HTTP/1.1 302 Found\r\nLocation: http://x/\r\nConnection: close\r\n\r\n"


def test_round_trip_checks_every_request() -> None:
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_args: object) -> None:
            pass

        def do_GET(self) -> None:
            seen.append(f"{self.headers['Host']} {self.path}")
            self.send_response(200)
            self.send_header("Content-Length", "5")
            self.end_headers()
            self.wfile.write(b"hello")

    origin = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    port = origin.server_address[1]

    async def check(host: str) -> str:  # a policy: the origin's name is allowed, everything else not
        if host == "origin.test":
            return "127.0.0.1"
        raise ForbiddenAddress(f"{host} is not a public address")

    proxy = PolicyProxy(check)
    proxy.start()
    try:
        def ask(url: str, user: str, password: str) -> tuple[int, bytes, str]:
            conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
            conn.request("GET", url, headers={"Proxy-Authorization": _auth(user, password)})
            resp = conn.getresponse()
            body = resp.read()
            conn.close()
            return resp.status, body, resp.getheader("X-Heatcache-Refused") or ""

        assert ask(f"http://origin.test:{port}/f", "job1", proxy.password)[:2] == (200, b"hello")
        assert seen == [f"origin.test:{port} /f"]  # went to the checked address, Host kept
        status, _, why = ask(f"http://127.0.0.1:{port}/secret", "job2", proxy.password)
        assert status == 403 and "127.0.0.1 is not a public address" in why
        assert "127.0.0.1 is not a public address" in proxy.refused("job2") and proxy.refused("job1") == ""
        assert ask(f"http://origin.test:{port}/f", "job3", "wrong")[0] == 407
        assert len(seen) == 1
        assert proxy.options("job9")["all-proxy"] == f"http://127.0.0.1:{proxy.port}"
    finally:
        proxy.stop()
        origin.shutdown()
        origin.server_close()
