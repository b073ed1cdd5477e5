"""bench/sniffer: the sniffer's fast path against tshark, httpry and scapy's dissection on one
capture, then live capture on a veth at a fixed request rate (kernel drops printed).

"fast" is the compiled fast path (sniffer/_fastpath.c, pcap records read by it too); the
pure-Python reference it is tested against is measured on the same capture as its own line.

All of them read the same generated pcap in the same run; the ratios are what matter on a noisy
machine. Last line: ``sniffer: ... ratio=<fast/tshark> (reference tshark)``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from heatcache import contract  # noqa: E402
from heatcache.kafkautil import producer  # noqa: E402
from heatcache.netns import GatewayLab  # noqa: E402
from heatcache.services.kafka import EmbeddedKafka, ensure_topics  # noqa: E402
from heatcache.settings import load_settings  # noqa: E402
from sniffer.app import build_parser  # noqa: E402
from sniffer.capture import LiveCapture, in_netns, pcap_event_batches  # noqa: E402
from sniffer.publish import BatchPublisher  # noqa: E402
from sniffer.synth import generate, tcp_frame  # noqa: E402


def fast_path(pcap: Path, compiled: bool = True) -> tuple[int, float]:
    parser = build_parser(load_settings(client_id_secret="bench", sniff_compiled=compiled))
    if parser.compiled != compiled:
        raise SystemExit("sniffer: the compiled fast path is not built (run ./dev lint to build it)")
    start = time.perf_counter()
    n = 0
    for events, _last in pcap_event_batches(pcap, parser):  # as `heatcache sniff` reads a capture file
        for ev in events:
            n += ev.method != "TLS"  # tshark's http.request count has no TLS hosts
    return n, time.perf_counter() - start


def tshark(pcap: Path) -> tuple[int, float]:
    start = time.perf_counter()
    proc = subprocess.run(["tshark", "-n", "-r", str(pcap), "-Y", "http.request", "-T", "fields", "-E",
                           "aggregator=|", "-e", "http.request.method", "-e", "http.host", "-e", "http.request.uri"],
                          capture_output=True, text=True, check=True)
    elapsed = time.perf_counter() - start
    n = sum(m in ("GET", "HEAD") for line in proc.stdout.splitlines() for m in line.split("\t")[0].split("|"))
    return n, elapsed


def httpry(pcap: Path, work: Path) -> tuple[int, float]:
    """httpry (a C HTTP logger, Debian's httpry) on the same capture: GET/HEAD lines it logs."""
    out = work / "httpry.log"
    start = time.perf_counter()
    subprocess.run(["httpry", "-q", "-r", str(pcap), "-f", "method,host,request-uri", "-o", str(out)],
                   capture_output=True, check=True)
    elapsed = time.perf_counter() - start
    n = sum(line.split("\t", 1)[0] in ("GET", "HEAD") for line in out.read_text(errors="replace").splitlines())
    return n, elapsed


def scapy_dissect(pcap: Path, limit: int) -> tuple[int, float]:
    from scapy.layers.http import HTTPRequest
    from scapy.layers.inet import TCP
    from scapy.packet import bind_layers
    from scapy.utils import PcapReader

    bind_layers(TCP, HTTPRequest, dport=8080)
    start = time.perf_counter()
    n = 0
    with PcapReader(str(pcap)) as reader:
        for i, pkt in enumerate(reader):
            if i >= limit:
                break
            layer = pkt.getlayer(HTTPRequest)
            while layer is not None:  # pipelined requests are chained layers
                if layer.Method in (b"GET", b"HEAD"):
                    n += 1
                layer = layer.payload.getlayer(HTTPRequest) if layer.payload else None
    return n, time.perf_counter() - start


def live(rate: int, seconds: float, bootstrap: str) -> dict[str, object]:
    """Frames at ``rate``/s into a veth in one namespace; the sniffer's capture+parse loop reads
    them on the peer in another. Publishing is left out: this measures the capture side."""
    lab = GatewayLab().start()
    try:
        request = b"GET /live/object.bin HTTP/1.1\r\nHost: live.example\r\nUser-Agent: bench\r\n\r\n"
        frame = tcp_frame(lab.client_ip, lab.origin_ip, 40000, 80, request)
        # the gateway's MAC as destination, so the peer takes the frames as PACKET_HOST
        link = subprocess.run(["ip", "-n", lab.gateway, "-o", "link", "show", "dev", lab.gw_client_if],
                              capture_output=True, text=True, check=True).stdout
        gw_mac = bytes.fromhex(link.split("link/ether ")[1].split()[0].replace(":", ""))
        frame = gw_mac + frame[6:]
        # one keep-alive flow, each request next in sequence (the same frame twice would be a
        # retransmission, counted once): the TCP sequence number is at bytes 38-42
        need = int(rate * (seconds + 1)) + 1
        frames = [frame[:38] + ((1 + i * len(request)) & 0xFFFFFFFF).to_bytes(4, "big") + frame[42:]
                  for i in range(need)]
        capture = LiveCapture(lab.gw_client_if, (80,), netns=lab.gateway)
        got = Counter[str]()
        parser = build_parser(load_settings(client_id_secret="bench"), got)
        stop = threading.Event()
        # the whole sniffer loop: capture, parse, and publish batches to a real Kafka broker
        settings = load_settings(topic_prefix="bench-")
        ensure_topics(bootstrap, settings, names=(contract.REQUESTS,))
        prod = producer(bootstrap, **{"linger.ms": settings.batch_linger_ms})
        publisher = BatchPublisher(prod, settings.topic(contract.REQUESTS), settings.kafka_partitions,
                                   settings.batch_max_events, settings.batch_linger_ms / 1000, got)

        def consume() -> None:
            for item in capture.frames(stop):
                if item is not None:
                    for ev in parser.events(item[0], item[1], item[2]):
                        publisher.add(ev)
                publisher.tick()
            publisher.flush()

        reader = threading.Thread(target=consume)
        reader.start()
        if shutil.which("tcpreplay"):
            # a C sender: tcpreplay paces the frames at the asked rate from the client namespace
            pcap = Path(tempfile.mkdtemp(prefix="bench-live-")) / "live.pcap"
            from sniffer.synth import Traffic

            Traffic(frames=frames[: int(rate * seconds)]).write_pcap(pcap)
            start = time.perf_counter()
            subprocess.run(lab.exec_args(lab.client, "tcpreplay", "-q", f"--pps={rate}", "-i", f"cg{lab.tag}",
                                         str(pcap)), capture_output=True, check=True)
            send_time = time.perf_counter() - start
            sent = int(rate * seconds)
            shutil.rmtree(pcap.parent, ignore_errors=True)
            sender_name = "tcpreplay"
        else:
            with in_netns(lab.client):
                sender = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
                sender.bind((f"cg{lab.tag}", 0))
            sent = 0
            start = time.perf_counter()
            interval = 1.0 / rate
            while (now := time.perf_counter()) - start < seconds:
                due = int((now - start) / interval) + 1
                while sent < due and sent < need:
                    sender.send(frames[sent])
                    sent += 1
            send_time = time.perf_counter() - start
            sender.close()
            sender_name = "python"
        time.sleep(1.0)
        stop.set()
        reader.join(5)
        drops = capture.kernel_drops()
        capture.close()
        return {"sent": sent, "rate": sent / send_time, "requests": got["requests"], "kernel_drops": drops,
                "sender": sender_name, "published": got["published"], "produce_errors": got["produce.errors"]}
    finally:
        lab.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="smaller capture, shorter live run (< 50 s)")
    ap.add_argument("--rate", type=int, default=20_000, help="live requests per second")
    args = ap.parse_args()
    n_requests = 30_000 if args.quick else 200_000
    for tool in ("tshark", "httpry"):
        if shutil.which(tool) is None:  # bench/sniffer installs both; run through it
            print(f"sniffer: {tool} missing (apt-get install {tool})", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="bench-sniffer-"))
    try:
        pcap = work / "gateway.pcap"
        traffic = generate(n_requests, seed=5)
        traffic.write_pcap(pcap)
        print(f"capture: {len(traffic.frames):,} frames, "
              f"{sum(r[0] in ('GET', 'HEAD') for r in traffic.requests):,} GET/HEAD requests")
        fast_n, fast_t = fast_path(pcap)
        print(f"fast path : {fast_n:,} requests in {fast_t:.2f}s = {fast_n / fast_t:,.0f} req/s (compiled)")
        py_n, py_t = fast_path(pcap, compiled=False)
        print(f"reference : {py_n:,} requests in {py_t:.2f}s = {py_n / py_t:,.0f} req/s (pure Python)")
        ts_n, ts_t = tshark(pcap)
        print(f"tshark    : {ts_n:,} requests in {ts_t:.2f}s = {ts_n / ts_t:,.0f} req/s")
        hr_n, hr_t = httpry(pcap, work)
        print(f"httpry    : {hr_n:,} requests in {hr_t:.2f}s = {hr_n / hr_t:,.0f} req/s "
              f"(logged {hr_n / max(1, ts_n):.0%} of tshark's)")
        sc_n, sc_t = scapy_dissect(pcap, 3_000 if args.quick else 20_000)
        print(f"scapy     : {sc_n:,} requests in {sc_t:.2f}s = {sc_n / sc_t:,.0f} req/s (first frames only)")
        if fast_n != ts_n or py_n != fast_n:
            print(f"WARNING: fast path found {fast_n} requests, reference {py_n}, tshark {ts_n}")
        if os.geteuid() == 0:
            broker = EmbeddedKafka(work / "kafka")
            try:
                res = live(args.rate, 4.0 if args.quick else 15.0, broker.start())
            finally:
                broker.stop()
            print(f"live      : sent {res['sent']:,} at {res['rate']:,.0f}/s ({res['sender']}), "
                  f"parsed {res['requests']:,}, published {res['published']:,}, "
                  f"produce errors {res['produce_errors']}, kernel drops {res['kernel_drops']}")
        ratio = (fast_n / fast_t) / (ts_n / ts_t)
        # httpry is timed on the requests it logs; it misses pipelined and split heads, so the
        # fair figure is per request found, and its share found is printed next to it
        print(f"sniffer: fast={fast_n / fast_t:,.0f} req/s reference={py_n / py_t:,.0f} req/s "
              f"tshark={ts_n / ts_t:,.0f} req/s "
              f"httpry={hr_n / hr_t:,.0f} req/s httpry_ratio={(fast_n / fast_t) / (hr_n / hr_t):.2f} "
              f"httpry_found={hr_n / max(1, ts_n):.2f} "
              f"scapy={sc_n / sc_t:,.0f} req/s scapy_ratio={(fast_n / fast_t) / (sc_n / sc_t):.1f} "
              f"ratio={ratio:.2f} (reference tshark)")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
