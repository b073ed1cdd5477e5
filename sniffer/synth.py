"""Synthetic gateway traffic for tests and benchmarks, written as a pcap with plain struct packing
(fast enough for hundreds of thousands of packets).

The mix is what a campus gateway's mirror port carries: HTTP GET/HEAD over IPv4 and IPv6, some
802.1Q-tagged, pipelined requests in one segment, heads cut across two segments of one flow,
POSTs with bodies, HTTP responses, pure ACKs, DNS over UDP, TLS ClientHellos with SNI and other
TLS records. Popularity follows a Zipf law, as campus downloads do. The generator returns the
ground truth of what it wrote, so a test can compare it with the sniffer and with tshark.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field
from pathlib import Path
from socket import AF_INET6, inet_pton

PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)


def client_hello(server_name: str | None) -> bytes:
    """A minimal TLS 1.2-style ClientHello record, with an SNI extension when a name is given."""
    exts = b""
    if server_name is not None:
        name = server_name.encode()
        entry = b"\x00" + struct.pack("!H", len(name)) + name
        sni = struct.pack("!H", len(entry)) + entry
        exts += struct.pack("!HH", 0, len(sni)) + sni
    exts += struct.pack("!HH", 10, 4) + b"\x00\x02\x00\x17"  # supported_groups, so SNI is not alone
    body = (b"\x03\x03" + bytes(32) + b"\x00" + struct.pack("!H", 4) + b"\x13\x01\xc0\x2f" + b"\x01\x00"
            + struct.pack("!H", len(exts)) + exts)
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def tcp_frame(src: str, dst: str, sport: int, dport: int, payload: bytes, seq: int = 1, vlan: int | None = None,
              flags: int = 0x18) -> bytes:
    """An Ethernet frame (optionally 802.1Q-tagged) with IPv4 or IPv6 and TCP."""
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, 1, 5 << 4, flags, 65535, 0, 0) + payload
    return _ip_frame(src, dst, 6, tcp, vlan)


def udp_frame(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    return _ip_frame(src, dst, 17, udp, None)


def _ip_frame(src: str, dst: str, proto: int, l4: bytes, vlan: int | None) -> bytes:
    if ":" in src:
        ip = struct.pack("!IHBB", 6 << 28, len(l4), proto, 64) + inet_pton(AF_INET6, src) + inet_pton(AF_INET6, dst)
        ethertype = 0x86DD
    else:
        a, b = bytes(map(int, src.split("."))), bytes(map(int, dst.split(".")))
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0x4000, 64, proto, 0, a, b)
        ip = hdr[:10] + struct.pack("!H", _checksum(hdr)) + hdr[12:]
        ethertype = 0x0800
    eth = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01"
    if vlan is not None:
        eth += struct.pack("!HH", 0x8100, vlan)
    return eth + struct.pack("!H", ethertype) + ip + l4


@dataclass
class Traffic:
    """What was written: frames, and the requests a faithful parser must find, in order."""

    frames: list[bytes] = field(default_factory=list)
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # (method, host header, uri)
    tls_hosts: list[str] = field(default_factory=list)

    def write_pcap(self, path: Path, start_ts: float = 1_790_000_000.0, step: float = 0.0001) -> None:
        with open(path, "wb") as fh:
            fh.write(PCAP_HEADER)
            for i, frame in enumerate(self.frames):
                ts = start_ts + i * step
                sec = int(ts)
                fh.write(struct.pack("<IIII", sec, int((ts - sec) * 1e6), len(frame), len(frame)))
                fh.write(frame)


def generate(n_requests: int, seed: int = 7, urls: int = 5000, clients: int = 2000) -> Traffic:
    """About ``n_requests`` GET/HEAD requests in a realistic mix of other traffic."""
    rng = random.Random(seed)
    hosts = [f"cdn{i}.example.org" for i in range(40)] + ["download.windowsupdate.com", "dl.google.com"]
    weights = [1.0 / (rank + 1) for rank in range(urls)]  # Zipf(1)
    paths = [f"/files/{i // 97}/object-{i}.{rng.choice(['mp4', 'iso', 'cab', 'zip', 'pdf'])}" for i in range(urls)]
    url_hosts = [rng.choice(hosts) for _ in range(urls)]
    t = Traffic()
    port = 32768  # Linux's ephemeral range: client ports above every registered server port
    flow = 0

    def next_port() -> int:
        nonlocal port
        port = port + 1 if port < 60999 else 32768
        return port

    def client_addr(v6: bool) -> str:
        c = rng.randrange(clients)
        return f"2001:db8:10::{c + 1:x}" if v6 else f"10.{20 + c // 250}.{c % 250}.{1 + (c * 7) % 250}"

    def server_addr(v6: bool) -> str:
        return "2001:db8:99::80" if v6 else f"203.0.113.{rng.randrange(1, 250)}"

    def request(method: str = "GET") -> tuple[bytes, tuple[str, str, str], int]:
        i = rng.choices(range(urls), weights)[0]
        dport = 8080 if rng.random() < 0.1 else 80
        host = url_hosts[i] + (":8080" if dport == 8080 else "")
        uri = paths[i] + (f"?token={rng.randrange(10**6)}&utm_source=feed" if rng.random() < 0.3 else "")
        rng_hdr = f"Range: bytes={rng.randrange(10**6)}-\r\n" if rng.random() < 0.1 else ""
        ua = rng.choice(["Mozilla/5.0 (X11; Linux x86_64)", "Microsoft-Delivery-Optimization/10.0", "curl/8.5.0"])
        head = (f"{method} {uri} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {ua}\r\n{rng_hdr}"
                f"Accept: */*\r\nConnection: keep-alive\r\n\r\n").encode()
        return head, (method, host, uri), dport

    def isn() -> int:
        return rng.getrandbits(32)

    made = 0
    while made < n_requests:
        flow += 1
        v6 = rng.random() < 0.2
        vlan = 100 + rng.randrange(4) if rng.random() < 0.15 else None
        src, dst, sport = client_addr(v6), server_addr(v6), next_port()
        kind = rng.random()
        if kind < 0.55:  # one request per segment
            method = "HEAD" if rng.random() < 0.05 else "GET"
            head, truth, dport = request(method)
            t.frames.append(tcp_frame(src, dst, sport, dport, head, seq=isn(), vlan=vlan))
            t.requests.append(truth)
            made += 1
        elif kind < 0.65:  # pipelined: 2-3 heads in one segment, to one port
            parts, truths = [], []
            head, truth, dport = request()
            parts.append(head)
            truths.append(truth)
            for _ in range(rng.randrange(1, 3)):
                h2, tr2, _p = request()
                host = tr2[1].partition(":")[0] + (":8080" if dport == 8080 else "")
                h2 = h2.replace(f"Host: {tr2[1]}\r\n".encode(), f"Host: {host}\r\n".encode())
                parts.append(h2)
                truths.append((tr2[0], host, tr2[2]))
            t.frames.append(tcp_frame(src, dst, sport, dport, b"".join(parts), seq=isn(), vlan=vlan))
            t.requests.extend(truths)
            made += len(truths)
        elif kind < 0.68:  # a head cut across two segments of one flow
            head, truth, dport = request()
            cut = rng.randrange(5, len(head) - 5)
            seq = isn()
            t.frames.append(tcp_frame(src, dst, sport, dport, head[:cut], seq=seq, vlan=vlan))
            t.frames.append(tcp_frame(src, dst, sport, dport, head[cut:], seq=seq + cut, vlan=vlan))
            t.requests.append(truth)
            made += 1
        elif kind < 0.70:  # POST with a body: a request, but not one the sniffer keeps
            form = b"a=1&b=2"
            post_host = rng.choice(hosts)
            post = f"POST /api/submit HTTP/1.1\r\nHost: {post_host}\r\nContent-Length: {len(form)}\r\n\r\n"
            t.frames.append(tcp_frame(src, dst, sport, 80, post.encode() + form, vlan=vlan))
            t.requests.append(("POST", post_host, "/api/submit"))
        elif kind < 0.78:  # HTTP response from the origin
            resp = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + bytes(rng.randrange(200, 1200))
            t.frames.append(tcp_frame(dst, src, 80, sport, resp, vlan=vlan))
        elif kind < 0.86:  # pure ACK
            t.frames.append(tcp_frame(src, dst, sport, 80, b"", flags=0x10, vlan=vlan))
        elif kind < 0.91:  # DNS query
            query = b"\x12\x34\x01\x00\x00\x01" + bytes(6) + b"\x03cdn\x00\x00\x01\x00\x01"
            t.frames.append(udp_frame(src, dst, sport, 53, query))
        elif kind < 0.96:  # TLS ClientHello with SNI
            name = rng.choice(hosts)
            t.frames.append(tcp_frame(src, dst, sport, 443, client_hello(name), vlan=vlan))
            t.tls_hosts.append(name)
        else:  # TLS application data
            t.frames.append(tcp_frame(src, dst, sport, 443, b"\x17\x03\x03\x00\x20" + bytes(32), vlan=vlan))
    return t
