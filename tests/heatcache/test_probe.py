"""The Kubernetes exec probes: a real DNS server answering on UDP, a real aria2c."""

from __future__ import annotations

import socket
import threading

from dnslib import DNSRecord

from heatcache.probe import main, probe_aria2, probe_dns
from heatcache.services.aria2 import Aria2Daemon
from heatcache.settings import load_settings


def test_dns_probe_accepts_an_answer_with_its_id_and_fails_on_silence() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]

    def answer_once() -> None:
        data, peer = sock.recvfrom(512)
        sock.sendto(DNSRecord.parse(data).reply().pack(), peer)  # NOERROR, no records: still alive

    server = threading.Thread(target=answer_once)
    server.start()
    try:
        assert probe_dns(load_settings(dns_host="0.0.0.0", dns_port=port), timeout=10)
    finally:
        server.join(10)
    # nobody answers now: the probe fails (exit 1), never hangs
    settings = load_settings(dns_host="127.0.0.1", dns_port=port)
    try:
        probe_dns(settings, timeout=0.3)
        raise AssertionError("a silent port must fail the probe")
    except OSError:
        pass
    sock.close()
    assert main(["nonsense"]) == 2


def test_aria2_probe_needs_the_rpc_secret(aria2: Aria2Daemon) -> None:
    assert probe_aria2(load_settings(aria2_rpc_port=aria2.port, aria2_secret="s3cret"))
    try:
        ok = probe_aria2(load_settings(aria2_rpc_port=aria2.port, aria2_secret="wrong"))
    except OSError:  # aria2 answers a bad token with an HTTP error
        ok = False
    assert not ok
