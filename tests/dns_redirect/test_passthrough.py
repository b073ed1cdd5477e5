"""TLS passthrough on the cache node (dns_redirect/passthrough.py): a real HTTPS origin with a
self-signed certificate, a client that trusts exactly that certificate, dnsmasq as the upstream
resolver. The handshake completes with the origin's own certificate through the node."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dns_redirect.index import CacheIndex
from dns_redirect.passthrough import TlsPassthrough
from dns_redirect.route import Passthrough, Refuse, route_tls
from heatcache.contract import CacheEvent
from heatcache.lab import NODE_IP, ORIGIN_IP, Origin, make_sample_files, self_signed, shared_port, tls_server_context
from heatcache.services.dnsmasq import Dnsmasq
from heatcache.settings import load_settings
from heatcache.tls import hello_record_length, valid_sni
from tests.loopthread import on_loop_thread


@dataclass
class TlsLab:
    port: int
    tls: TlsPassthrough
    index: CacheIndex
    client_ctx: ssl.SSLContext
    files: dict[str, bytes]
    origin: Origin

    def get(self, path: str, name: str = "origin.lab.test") -> tuple[int, bytes, str]:
        raw = socket.create_connection((NODE_IP, self.port), timeout=10)
        with self.client_ctx.wrap_socket(raw, server_hostname=name) as tls:
            peer = tls.getpeercert()
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {name}:{self.port}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := tls.recv(1 << 20):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        subject = dict(x[0] for x in peer["subject"])  # type: ignore[index,misc]
        return int(head.split(b" ")[1]), body, str(subject.get("commonName"))


@pytest.fixture
def tls_lab(tmp_path: Path, dnsmasq: Dnsmasq) -> Iterator[TlsLab]:
    port = shared_port()
    cert, key = self_signed(tmp_path / "pki", ["origin.lab.test", "internal.lab.test"])
    files = make_sample_files(tmp_path / "www", {"big.bin": 1 << 20})
    origin = Origin(tmp_path / "www", ORIGIN_IP, port, tls=tls_server_context(cert, key)).start()
    settings = load_settings(state_dir=tmp_path / "state", upstream_dns=(dnsmasq.upstream,), node_address=NODE_IP,
                             allow_private_origins=True, outbound_address=NODE_IP, edge_tls_ports=(port,),
                             edge_tls_hello_timeout_s=1.0)
    index = CacheIndex()
    index.apply(CacheEvent(f"http://origin.lab.test:{port}/x", "cached", path="objects/00/x"))
    tls = TlsPassthrough(settings, index)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    try:
        with on_loop_thread(lambda: tls.start(NODE_IP, (port,)), tls.stop, stop_timeout=10):
            yield TlsLab(port, tls, index, client_ctx, files, origin)
    finally:
        origin.stop()


def test_https_to_a_steered_host_reaches_its_origin(tls_lab: TlsLab) -> None:
    status, body, subject = tls_lab.get("/big.bin")
    assert status == 200 and body == tls_lab.files["big.bin"] and subject == "origin.lab.test"
    assert tls_lab.origin.hits["/big.bin"] == 1
    fig = tls_lab.tls.figures.hosts["origin.lab.test"]
    assert fig.connections >= 1 and fig.bytes_down > len(tls_lab.files["big.bin"])
    assert tls_lab.tls.counters["tls.connections"] >= 1


def test_names_not_steered_here_are_refused(tls_lab: TlsLab) -> None:
    with pytest.raises(ssl.SSLError, match=r"UNRECOGNIZED_NAME|unrecognized name"):
        tls_lab.get("/big.bin", name="elsewhere.lab.test")
    raw = socket.create_connection((NODE_IP, tls_lab.port), timeout=10)
    with raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # not TLS at all
        assert raw.recv(100).startswith(b"\x15\x03")  # an alert, then the connection closes
        assert raw.recv(100) == b""
    raw = socket.create_connection((NODE_IP, tls_lab.port), timeout=10)
    with raw:  # a client that never says hello is dropped after the hello timeout
        assert raw.recv(100) == b""
    c = tls_lab.tls.counters
    assert c["tls.refused.not-steered"] == 1 and c["tls.refused.not-hello"] == 1 and c["tls.refused.timeout"] == 1
    assert tls_lab.origin.hits == {}


def test_internal_addresses_are_refused(tmp_path: Path, dnsmasq: Dnsmasq) -> None:
    settings = load_settings(state_dir=tmp_path, upstream_dns=(dnsmasq.upstream,), node_address=NODE_IP)
    index = CacheIndex()
    index.apply(CacheEvent("http://internal.lab.test/x", "cached", path="objects/00/x"))
    tls = TlsPassthrough(settings, index)
    box: list[int] = []

    async def start() -> None:
        box.extend(await tls.start(NODE_IP, (0,)))

    with on_loop_thread(start, tls.stop):
        raw = socket.create_connection((NODE_IP, box[0]), timeout=10)
        ctx = ssl.create_default_context()
        with pytest.raises(ssl.SSLError, match=r"HANDSHAKE_FAILURE|handshake failure"):
            ctx.wrap_socket(raw, server_hostname="internal.lab.test")
        raw.close()
    assert tls.counters["tls.refused.internal"] == 1


def test_tls_routing_is_the_routers() -> None:
    index = CacheIndex()
    index.apply(CacheEvent("http://a.test/x", "cached", path="p"))
    index.apply(CacheEvent("http://gone.test/x", "cached", path="p"))
    index.apply(CacheEvent("http://gone.test/x", "evicted"), now=100.0)
    assert route_tls("a.test", 443, index, 60, 110.0) == Passthrough("a.test", 443, "")
    assert route_tls("gone.test", 443, index, 60, 150.0) == Passthrough("gone.test", 443, "")
    assert isinstance(route_tls("gone.test", 443, index, 60, 161.0), Refuse)
    assert isinstance(route_tls("b.test", 443, index, 60, 110.0), Refuse)
    assert isinstance(route_tls(None, 443, index, 60, 110.0), Refuse)


def test_sni_checks() -> None:
    assert valid_sni("Video.Example.ORG") == "video.example.org"
    assert valid_sni("a..b") is None and valid_sni("a.b.") is None and valid_sni("-a.b") is None
    assert valid_sni("a b") is None and valid_sni("ä.test") is None and valid_sni("x" * 64 + ".t") is None
    assert hello_record_length(b"") == 5 and hello_record_length(b"\x16") == 5
    assert hello_record_length(b"\x16\x03\x01\x02\x00") == 5 + 512
    assert hello_record_length(b"GET /") is None and hello_record_length(b"\x16\x02\x00\x00\x00") is None
