"""Live capture across real hosts (sniffer/app.py, sniffer/capture.py): a client namespace sends
HTTP requests through a gateway namespace to an origin namespace; the sniffer captures on the
gateway's client-facing interface and must publish exactly the requests sent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from heatcache import contract
from heatcache.contract import RequestBatch
from heatcache.kafkautil import read_topic
from heatcache.lifecycle import READY_MARK
from heatcache.netns import GatewayLab
from heatcache.netutil import free_port
from heatcache.settings import Settings
from heatcache.stack import settings_env

CLIENT = r"""
import http.client, sys
host, n = sys.argv[1], int(sys.argv[2])
conn = http.client.HTTPConnection(host, 80, timeout=10)
for i in range(n):
    conn.request("GET" if i % 5 else "HEAD", f"/f{i % 3}.bin?i={i}&utm_source=x", headers={"Host": "origin.lab.test"})
    conn.getresponse().read()
conn.close()
"""


@pytest.fixture
def gateway_lab(tmp_path: Path) -> Iterator[GatewayLab]:
    lab = GatewayLab().start()
    www = tmp_path / "www"
    www.mkdir()
    for i in range(3):
        (www / f"f{i}.bin").write_bytes(os.urandom(2000 * (i + 1)))
    origin = subprocess.Popen(lab.exec_args(lab.origin, sys.executable, "-m", "http.server", "80", "--bind",
                                            lab.origin_ip, "--directory", str(www)),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while subprocess.run(lab.exec_args(lab.client, "curl", "-s", "-o", "/dev/null", f"http://{lab.origin_ip}/"),
                             check=False).returncode != 0:
            assert time.monotonic() < deadline, "origin namespace did not answer"
            time.sleep(0.2)
        yield lab
    finally:
        origin.terminate()
        origin.wait(10)
        lab.stop()


def test_sniffer_on_gateway_publishes_exactly_what_was_sent(gateway_lab: GatewayLab,
                                                            kafka_settings: Settings) -> None:
    lab = gateway_lab
    metrics_port = free_port()
    settings = kafka_settings.model_copy(update={
        "sniff_iface": lab.gw_client_if, "sniff_netns": lab.gateway, "sniff_ports": (80,), "batch_linger_ms": 50,
        "metrics_port": metrics_port})
    env = {**os.environ, **settings_env(settings)}
    sniffer = subprocess.Popen([sys.executable, "-m", "heatcache.cli", "sniff"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    assert sniffer.stdout is not None
    for line in sniffer.stdout:
        if READY_MARK in line:
            break
    else:
        pytest.fail("sniffer never became ready")
    n = 300
    subprocess.run(lab.exec_args(lab.client, sys.executable, "-c", CLIENT, lab.origin_ip, str(n)), check=True,
                   timeout=60)
    # Prometheus sees the same counters while the sniffer runs
    deadline = time.monotonic() + 10
    while True:
        body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        if f'heatcache_sniffer_requests_total {float(n)}' in body or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert f'heatcache_sniffer_requests_total {float(n)}' in body
    sniffer.send_signal(signal.SIGTERM)
    out, _ = sniffer.communicate(timeout=30)
    assert sniffer.returncode == 0, out
    events = [e for m in read_topic(settings.kafka_bootstrap, settings.topic(contract.REQUESTS))
              for e in contract.decode(m.value(), RequestBatch).events]
    events.sort(key=lambda e: e.ts)
    sent = [("GET" if i % 5 else "HEAD", f"/f{i % 3}.bin?i={i}&utm_source=x") for i in range(n)]
    assert [(e.method, e.path) for e in events] == sent
    assert {e.host for e in events} == {"origin.lab.test"}
    assert events[0].cache_key == "http://origin.lab.test/f0.bin?i=0"
    assert len({e.client for e in events}) == 1 and lab.client_ip not in events[0].client
    assert "'kernel-drops': 0" in out


@pytest.mark.parametrize("ring", [True, False], ids=["packet-mmap", "recvfrom"])
def test_live_capture_takes_every_frame(ring: bool) -> None:
    """LiveCapture on a veth, through the PACKET_MMAP ring (sniffer/_ring.c) and through plain
    recvfrom: every frame sent arrives once, byte for byte, in order; the kernel drops none."""
    import socket
    import threading

    from sniffer.capture import LiveCapture, in_netns
    from sniffer.synth import tcp_frame

    lab = GatewayLab().start()
    try:
        link = subprocess.run(["ip", "-n", lab.gateway, "-o", "link", "show", "dev", lab.gw_client_if],
                              capture_output=True, text=True, check=True).stdout
        gw_mac = bytes.fromhex(link.split("link/ether ")[1].split()[0].replace(":", ""))
        frames = [gw_mac + tcp_frame(lab.client_ip, lab.origin_ip, 40000 + i % 7, 80,
                                     f"GET /f{i} HTTP/1.1\r\nHost: a.example\r\n\r\n".encode(), seq=i * 100)[6:]
                  for i in range(2_000)]
        capture = LiveCapture(lab.gw_client_if, (80,), netns=lab.gateway, ring=ring)
        assert (capture._ring is not None) is ring
        got: list[bytes] = []
        stop = threading.Event()

        def consume() -> None:
            for batch in capture.batches(stop):
                got.extend(frame for frame, _ts, _lt in batch)

        reader = threading.Thread(target=consume)
        reader.start()
        with in_netns(lab.client):
            sender = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            sender.bind((f"cg{lab.tag}", 0))
        for i, frame in enumerate(frames):
            sender.send(frame)
            if i % 200 == 199:
                time.sleep(0.01)
        sender.close()
        deadline = time.monotonic() + 10
        while len(got) < len(frames) and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        reader.join(5)
        drops = capture.kernel_drops()
        capture.close()
        assert got == frames and drops == 0
    finally:
        lab.stop()
