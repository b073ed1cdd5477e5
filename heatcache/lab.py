"""Lab parts shared by the demo, the integration tests and the benchmarks: a sample origin
with an access counter, and clients that resolve through heatcache's DNS from their own source
address (so each has its own pseudonymous client id)."""

from __future__ import annotations

import hashlib
import http.client
import json
import ssl
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype

from heatcache.netutil import free_port, free_port_udp_tcp, port_is_free
from heatcache.settings import Settings

ORIGIN_IP = "127.0.0.2"  # the lab's origin host
NODE_IP = "127.0.0.3"  # the lab's cache node (edge); clients are 127.0.1.N


def shared_port() -> int:
    """A port free on both the origin's and the node's address (the edge mirrors the origin)."""
    for _ in range(50):
        port = free_port(ORIGIN_IP)
        if port_is_free(port, NODE_IP):
            return port
    raise RuntimeError("no port free on both lab addresses")


def lab_settings(base: Settings, state_dir: Path, port: int, upstream: str, **update: object) -> Settings:
    """Settings for a stack on loopback: sniff the origin's port, steer to NODE_IP, resolve
    origins through ``upstream``, and keep the node's own traffic out of the heat."""
    values: dict[str, object] = {
        "state_dir": state_dir, "cache_dir": None, "kafka_port": 0, "sniff_iface": "lo",
        "sniff_ports": (port,), "ignore_addresses": (NODE_IP,), "upstream_dns": (upstream,),
        "allow_private_origins": True, "node_address": NODE_IP, "outbound_address": NODE_IP,
        "edge_host": NODE_IP, "edge_port": port, "dns_host": "127.0.0.1", "dns_port": free_port_udp_tcp(),
        "aria2_rpc_port": free_port(), "batch_linger_ms": 100, "catalog_url": "",
        "dns_health_interval_s": 0.5, "console_port": free_port(), "edge_tls_ports": (free_port(NODE_IP),),
        "lab_mode": True,  # a lab: the shipped default secrets are fine
    }
    values.update(update)
    return base.model_copy(update=values)


class Origin:
    """A threaded HTTP origin serving files from a folder, counting GETs per path."""

    def __init__(self, root: Path, address: str = "127.0.0.1", port: int = 0, rate_bps: int = 0,
                 tls: ssl.SSLContext | None = None) -> None:
        self.root = root
        self.rate_bps = rate_bps  # > 0: bodies trickle at about this rate (a narrow uplink; the console's tests)
        self.hits: Counter[str] = Counter()
        origin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: object) -> None:
                pass

            def _serve(self, body: bool) -> None:
                if self.path == "/__hits":  # the access counter, for checks from other hosts
                    data = json.dumps(dict(origin.hits)).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                name = self.path.split("?")[0].lstrip("/")
                path = (origin.root / name).resolve()
                if origin.root.resolve() not in path.parents or not path.is_file():
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = path.read_bytes()
                if body:
                    origin.hits[self.path] += 1
                status, start, end = 200, 0, len(data) - 1
                rng = self.headers.get("Range", "")
                if rng.startswith("bytes=") and "-" in rng:
                    a, b = rng[6:].split("-", 1)
                    start, end = int(a or 0), min(int(b) if b else len(data) - 1, len(data) - 1)
                    status = 206
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(end - start + 1))
                self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest()[:16] + '"')
                self.send_header("Last-Modified", "Mon, 23 Nov 2026 08:00:00 GMT")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                self.end_headers()
                if body and origin.rate_bps > 0:
                    chunk = max(1024, origin.rate_bps // 20)
                    for i in range(start, end + 1, chunk):
                        self.wfile.write(data[i : min(i + chunk, end + 1)])
                        time.sleep(chunk / origin.rate_bps)  # pacing the link, not synchronizing
                elif body:
                    self.wfile.write(data[start : end + 1])

            def do_GET(self) -> None:
                if self.path.startswith("/__redirect/"):  # hostile origin: points the client inwards
                    origin.hits[self.path] += 1
                    self.send_response(302)
                    self.send_header("Location", "http://127.0.0.1:" + self.path.split("/")[2] + "/secret")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self._serve(True)

            def do_POST(self) -> None:  # echoes the body: a form or an API call reaching its site
                data = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                origin.hits["POST " + self.path] += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_HEAD(self) -> None:
                self._serve(False)

        self.server = ThreadingHTTPServer((address, port), Handler)
        self.server.daemon_threads = True
        if tls is not None:  # HTTPS; the handshake runs in each request's thread, not in accept
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True,
                                                 do_handshake_on_connect=False)
        self.address, self.port = self.server.server_address[:2]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> Origin:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def self_signed(folder: Path, names: list[str]) -> tuple[Path, Path]:
    """A self-signed certificate for ``names`` (and its key), made with the openssl CLI: the lab's
    HTTPS origins present it and the lab's clients trust exactly it."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "cert.pem", folder / "key.pem"
    san = ",".join(f"DNS:{n}" for n in names)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={names[0]}",
                    "-addext", f"subjectAltName={san}"], check=True, capture_output=True)
    return cert, key


def tls_server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


def make_sample_files(root: Path, sizes: dict[str, int]) -> dict[str, bytes]:
    """Deterministic pseudo-random files (name -> bytes), written under root."""
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, size in sizes.items():
        seed = hashlib.sha256(name.encode()).digest()
        blocks = bytearray()
        counter = 0
        while len(blocks) < size:
            blocks += hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
            counter += 1
        data = bytes(blocks[:size])
        (root / name).write_bytes(data)
        out[name] = data
    return out


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]
    address: str  # where the client actually connected


def resolve_via(dns_addr: tuple[str, int], name: str) -> list[str]:
    """A real DNS query (dnspython) to heatcache's DNS; the A records it answers."""
    query = dns.message.make_query(name, "A")
    resp = dns.query.udp(query, dns_addr[0], port=dns_addr[1], timeout=3)
    return [r.to_text() for rrset in resp.answer if rrset.rdtype == dns.rdatatype.A for r in rrset]


def client_get(source: str, dns_addr: tuple[str, int], host: str, port: int, path: str,
               headers: dict[str, str] | None = None) -> Reply:
    """GET as a campus client would: resolve ``host`` through our DNS, connect from ``source``."""
    addresses = resolve_via(dns_addr, host)
    if not addresses:
        raise LookupError(f"{host} did not resolve")
    conn = http.client.HTTPConnection(addresses[0], port, timeout=30, source_address=(source, 0))
    try:
        conn.request("GET", path, headers={"Host": f"{host}:{port}", "User-Agent": "heatcache-lab/1",
                                           **(headers or {})})
        resp = conn.getresponse()
        return Reply(resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()}, addresses[0])
    finally:
        conn.close()


def client_sources(n: int, base: str = "127.0.1.") -> list[str]:
    """n distinct loopback source addresses (all of 127/8 is local on Linux)."""
    if n > 250:
        raise ValueError("at most 250 lab clients")
    return [f"{base}{i + 1}" for i in range(n)]


def serve_origin_main() -> None:
    """``python -m heatcache.lab ROOT ADDRESS PORT [CERT KEY]``: an Origin in the foreground (for
    namespaces); with a certificate and key, over HTTPS."""
    import signal
    import sys

    tls = tls_server_context(Path(sys.argv[4]), Path(sys.argv[5])) if len(sys.argv) > 5 else None
    origin = Origin(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), tls=tls).start()
    print("origin ready", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    origin.stop()


if __name__ == "__main__":
    serve_origin_main()
