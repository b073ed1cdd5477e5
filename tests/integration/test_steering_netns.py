"""Steering across real hosts: client, router and origin namespaces, this host as the cache node.

The client's resolver is heatcache's DNS (port 53 on the node); curl and aria2c in the client
namespace download a cached object (served by the edge: the origin's access counter does not
move), an uncached object on the same host (passed through), and a byte range. HTTPS to the
steered host completes its handshake with the origin's own (self-signed, client-trusted)
certificate through the node's TLS passthrough; a name not steered is refused there. When the
edge stops, the next DNS answer after the TTL points at the origin again, for both.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import pytest
from confluent_kafka import Producer

from heatcache import contract
from heatcache.contract import HotUrl
from heatcache.lab import self_signed
from heatcache.netns import CampusLab
from heatcache.services.dnsmasq import Dnsmasq
from heatcache.settings import Settings
from heatcache.stack import Stack

HOST = "origin.campus.test"
OTHER = "other.campus.test"  # served by the same origin, never steered


@pytest.fixture
def campus(tmp_path: Path) -> Iterator[tuple[CampusLab, dict[str, bytes]]]:
    lab = CampusLab().start()
    www = tmp_path / "www"
    www.mkdir()
    files = {"big.bin": os.urandom(3 * 1024 * 1024), "small.bin": os.urandom(40_000)}
    for name, data in files.items():
        (www / name).write_bytes(data)
    cert, key = self_signed(tmp_path / "pki", [HOST, OTHER])  # the client trusts exactly this
    origins = [subprocess.Popen(lab.exec_args(lab.origin, sys.executable, "-m", "heatcache.lab", str(www),
                                              lab.origin_ip, port, *tls), stdout=subprocess.PIPE, text=True)
               for port, tls in (("80", ()), ("443", (str(cert), str(key))))]
    try:
        for origin in origins:
            assert origin.stdout is not None and "origin ready" in origin.stdout.readline()
        yield lab, files
    finally:
        for origin in origins:
            origin.terminate()
            origin.wait(10)
            if origin.stdout is not None:
                origin.stdout.close()
        lab.stop()


def origin_hits(lab: CampusLab) -> dict[str, int]:
    conn = http.client.HTTPConnection(lab.origin_ip, 80, timeout=5)
    try:
        conn.request("GET", "/__hits")
        return dict(json.loads(conn.getresponse().read()))
    finally:
        conn.close()


def answer(lab: CampusLab) -> list[str]:
    resp = dns.query.udp(dns.message.make_query(HOST, "A"), lab.node_ip, port=53, timeout=3)
    return [r.to_text() for rrset in resp.answer for r in rrset]


def in_client(lab: CampusLab, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(lab.exec_args(lab.client, *args), capture_output=True, timeout=timeout, check=False)


def test_clients_are_steered_to_the_cache_and_back(campus: tuple[CampusLab, dict[str, bytes]],
                                                   kafka_settings: Settings, tmp_path: Path) -> None:
    lab, files = campus
    upstream = Dnsmasq({HOST: lab.origin_ip, OTHER: lab.origin_ip})
    upstream.start()
    settings = kafka_settings.model_copy(update={
        "state_dir": tmp_path / "state", "node_address": lab.node_ip, "dns_host": lab.node_ip, "dns_port": 53,
        "edge_host": lab.node_ip, "edge_port": 80, "upstream_dns": (upstream.upstream,),
        "allow_private_origins": True, "dns_ttl": 2, "dns_health_interval_s": 0.3, "edge_tls_ports": (443,),
    })
    cacert = str(tmp_path / "pki" / "cert.pem")
    stack = Stack(settings, stages=("fetch", "dns", "edge"), console=None)
    try:
        stack.start()
        assert answer(lab) == [lab.origin_ip]  # nothing cached yet: the origin's own address
        url = f"http://{HOST}/big.bin"
        prod = Producer({"bootstrap.servers": settings.kafka_bootstrap})
        prod.produce(settings.topic(contract.HOT_URLS), key=url.encode(),
                     value=contract.encode(HotUrl(url, url, HOST, 2, 2, 86400, time.time())))
        assert prod.flush(10) == 0
        deadline = time.monotonic() + 60
        while answer(lab) != [lab.node_ip]:
            assert time.monotonic() < deadline and not stack.failed(), "never steered"
            time.sleep(0.3)
        before = origin_hits(lab)
        assert before.get("/big.bin") == 1  # the one fetch by aria2 on the cache node

        # curl in the client namespace, resolving through our DNS
        out = tmp_path / "curl.bin"
        proc = in_client(lab, "curl", "-sS", "-D", "-", "-o", str(out), url)
        assert proc.returncode == 0, proc.stderr
        assert b"X-Cache: HIT" in proc.stdout and out.read_bytes() == files["big.bin"]
        rng = in_client(lab, "curl", "-sS", "-r", "100-199", url)
        assert rng.returncode == 0 and rng.stdout == files["big.bin"][100:200]
        # aria2c in the client namespace, same name, same resolver
        dl = tmp_path / "aria2"
        proc = in_client(lab, "aria2c", "-q", "--async-dns=false", "--allow-overwrite=true", "-d", str(dl), url)
        assert proc.returncode == 0, proc.stderr
        assert hashlib.sha256((dl / "big.bin").read_bytes()).digest() == hashlib.sha256(files["big.bin"]).digest()
        assert origin_hits(lab) == before  # every byte came from the cache node

        # an uncached object on the steered host is passed through to the origin
        proc = in_client(lab, "curl", "-sS", "-D", "-", f"http://{HOST}/small.bin")
        assert proc.returncode == 0 and b"X-Cache: MISS" in proc.stdout
        assert proc.stdout.endswith(files["small.bin"])
        assert origin_hits(lab)["/small.bin"] == 1

        # HTTPS to the steered host: spliced by SNI to the origin, its own certificate verified
        proc = in_client(lab, "curl", "-sS", "-v", "--cacert", cacert, f"https://{HOST}/small.bin")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == files["small.bin"] and f"Connected to {HOST} ({lab.node_ip})".encode() in proc.stderr
        # a name not steered, sent to the node on 443 anyway, is refused (no open relay)
        proc = in_client(lab, "curl", "-sS", "--cacert", cacert, "--resolve", f"{OTHER}:443:{lab.node_ip}",
                         f"https://{OTHER}/small.bin")
        assert proc.returncode != 0 and b"unrecognized name" in proc.stderr.lower(), proc.stderr

        # the edge goes away: steering stops within one TTL, clients reach the origin again
        stack.children.pop("edge").stop()
        stopped = time.monotonic()
        while answer(lab) != [lab.origin_ip]:
            assert time.monotonic() - stopped < settings.dns_ttl, "still steering to a dead edge after one TTL"
            time.sleep(0.1)
        proc = in_client(lab, "curl", "-sS", "-o", str(out), url)
        assert proc.returncode == 0 and out.read_bytes() == files["big.bin"]
        assert origin_hits(lab)["/big.bin"] == 2
        proc = in_client(lab, "curl", "-sS", "-v", "--cacert", cacert, f"https://{HOST}/small.bin")
        assert proc.returncode == 0 and proc.stdout == files["small.bin"], proc.stderr
        assert f"Connected to {HOST} ({lab.origin_ip})".encode() in proc.stderr  # direct again
    finally:
        stack.stop()
        upstream.stop()
