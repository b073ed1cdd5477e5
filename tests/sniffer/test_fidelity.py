"""Sniffer fidelity on crafted captures (issue 18): a retransmitted request counts once, a
request in IP fragments (IPv4 and IPv6) is reassembled, an HTTP/1.0 request without Host is
keyed on its destination, and segments that arrive out of order are parsed in sequence order.

Every case runs through the compiled fast path and the Python reference (same events frame by
frame, same counters), and the bounds (flows, out-of-order bytes, fragments) are exercised.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, fragment6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from heatcache.contract import RequestEvent
from sniffer.events import FrameParser
from sniffer.synth import tcp_frame
from tests.sniffer.test_fastpath import compiled, reference, write_pcap

C, S = "10.0.0.9", "203.0.113.5"
C6, S6 = "2001:db8::9", "2001:db8::5"
SYN, ACK_PSH = 0x02, 0x18


def head(path: str, host: str | None = "a.example", version: str = "1.1", pad: int = 0) -> bytes:
    lines = [f"GET {path} HTTP/{version}"] + ([f"Host: {host}"] if host is not None else [])
    if pad:
        lines.append("Cookie: " + "c" * pad)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def both(frames: list[tuple[bytes, float]], **kw: object) -> tuple[list[RequestEvent], Counter[str]]:
    """Both parsers over the frames: the same events per frame and the same counters."""
    ref, fast = reference(**kw), compiled(**kw)
    out: list[RequestEvent] = []
    for frame, ts in frames:
        got = fast.events(frame, ts, 1)
        assert got == ref.events(frame, ts, 1), frame
        out += got
    ref.flush()
    fast.flush()
    assert fast.counters == ref.counters
    return out, fast.counters


def flow(src: str, dst: str, sport: int, parts: list[tuple[int, bytes]], isn: int = 1000, syn: bool = True,
         dport: int = 80) -> list[bytes]:
    """A SYN (optional) and data segments at offsets from the ISN + 1, as given (any order)."""
    out = [tcp_frame(src, dst, sport, dport, b"", seq=isn, flags=SYN)] if syn else []
    out += [tcp_frame(src, dst, sport, dport, data, seq=isn + 1 + off) for off, data in parts]
    return out


def timed(frames: list[bytes], t0: float = 1_790_000_000.0) -> list[tuple[bytes, float]]:
    return [(f, t0 + i * 0.01) for i, f in enumerate(frames)]


def paths(events: list[RequestEvent]) -> list[str]:
    return [e.path for e in events]


# -- 1. retransmissions


def test_retransmitted_request_counts_once() -> None:
    a, b = head("/a.iso"), head("/b.iso")
    frames = flow(C, S, 40000, [(0, a), (0, a), (len(a), b), (0, a), (len(a), b)])
    # the same without the SYN (the capture started mid-connection), and over IPv6
    frames += flow(C, S, 40001, [(0, a), (0, a), (len(a), b), (len(a), b)], syn=False)
    frames += flow(C6, S6, 40002, [(0, a), (0, a)])
    events, c = both(timed(frames))
    assert paths(events) == ["/a.iso", "/b.iso", "/a.iso", "/b.iso", "/a.iso"]
    assert c["drop.retransmission"] == 6 and c["requests"] == 5


def test_resent_segment_with_new_data_counts_only_the_new_request() -> None:
    """A retransmission that carries old and new bytes (re-segmented): only the new part is parsed."""
    a, b, big = head("/a"), head("/b"), head("/big", pad=2000)
    frames = flow(C, S, 40010, [(0, a), (0, a + b)])  # resent /a with /b behind it
    # a head cut in two; the resend covers the first part and the rest
    frames += flow(C, S, 40011, [(0, big[:1000]), (0, big)])
    events, c = both(timed(frames))
    assert paths(events) == ["/a", "/b", "/big"]
    assert c["retransmission-trimmed"] == 2 and c["drop.retransmission"] == 0


def test_new_connection_on_reused_ports_is_not_a_retransmission() -> None:
    a = head("/a")
    frames = flow(C, S, 40020, [(0, a)], isn=5000) + flow(C, S, 40020, [(0, a)], isn=5000 + 3)  # new SYN
    frames += flow(C, S, 40020, [(0, a)], isn=900_000_000, syn=False)  # far off: ports reused, SYN not seen
    events, c = both(timed(frames))
    assert paths(events) == ["/a", "/a", "/a"] and c["drop.retransmission"] == 0 and c["flow-restarts"] == 1


# -- 2. out of order


def test_out_of_order_segments_are_parsed_in_sequence_order() -> None:
    a, b, c3 = head("/1"), head("/2"), head("/3")
    big = head("/cut.iso", pad=3000)
    frames = flow(C, S, 40030, [(len(a), b), (len(a) + len(b), c3), (0, a)])  # 2, 3, then 1
    # a head cut in three, segments 1, 3, 2
    frames += flow(C, S, 40031, [(0, big[:1400]), (2800, big[2800:]), (1400, big[1400:2800])])
    # a late segment resent while it waited: parsed once
    frames += flow(C6, S6, 40032, [(len(a), b), (len(a), b), (0, a)])
    events, c = both(timed(frames))
    assert paths(events) == ["/1", "/2", "/3", "/cut.iso", "/1", "/2"]
    assert c["out-of-order"] == 5 and c["drop.retransmission"] == 1 and c["requests"] == 6
    assert c["drop.incomplete-head"] == 0 and c["drop.out-of-order"] == 0


def test_gap_never_filled_is_skipped_after_the_ttl_or_the_byte_bound() -> None:
    a, b, c3 = head("/1"), head("/2"), head("/3")
    lost = len(a)  # segment /1 never reaches the capture
    frames = timed(flow(C, S, 40040, [(lost, b)]))
    frames.append((tcp_frame(C, S, 40040, 80, c3, seq=1001 + lost + len(b)), frames[-1][1] + 6.0))  # after the TTL
    events, c = both(frames)
    assert paths(events) == ["/2", "/3"] and c["drop.tcp-gap"] == 1
    # the byte bound: more than max_out_of_order waiting behind a gap
    seg = head("/x", pad=900)
    parts = [(100 + i * len(seg), seg) for i in range(4)]
    events, c = both(timed(flow(C, S, 40041, parts)), max_out_of_order=2500)
    assert paths(events) == ["/x"] * 4 and c["drop.tcp-gap"] == 1
    # a flow that goes quiet behind a gap: dropped (counted) at expiry / the end
    events, c = both(timed(flow(C, S, 40042, [(lost, b)])))
    assert events == [] and c["drop.out-of-order"] == 1


def test_flow_table_is_bounded() -> None:
    frames = []
    for i in range(40):
        frames += flow(C, S, 41000 + i, [(0, head(f"/{i}"))])
    for i in range(40):  # retransmissions of all of them: only the recent flows are remembered
        frames.append(tcp_frame(C, S, 41000 + i, 80, head(f"/{i}"), seq=1001))
    events, c = both(timed(frames))
    assert len(events) == 40 and c["drop.retransmission"] == 40
    # a table too small for the flows: it starts over (counted), some resends count again
    events, c = both(timed(frames), max_flows=16)
    assert c["flows-reset"] > 0 and c["requests"] == len(events) > 40
    fast = compiled(max_flows=16)
    for frame, ts in timed(frames):
        fast.events(frame, ts, 1)
    assert len(fast._next) <= 16


# -- 3. HTTP/1.0 without Host


def test_http10_without_host_is_keyed_on_the_destination() -> None:
    reqs = [(C, S, 80, head("/pub/file.iso", None, "1.0")), (C, S, 8080, head("/q?x=1", None, "1.0")),
            (C6, S6, 80, head("/v6", None, "1.0")),
            (C, S, 80, head("/h", "", "1.0")),  # an empty Host: the same
            (C, S, 80, head("/keep", "b.example", "1.0")),
            (C, S, 80, head("/no", None, "1.1"))]  # HTTP/1.1 requires Host
    frames = [tcp_frame(src, dst, 40050 + i, dport, h, seq=1 + len(h) * rnd)
              for rnd in (0, 1) for i, (src, dst, dport, h) in enumerate(reqs)]  # twice: memo hits
    events, c = both(timed(frames))
    assert [(e.host, e.url) for e in events[:5]] == [
        (S, f"http://{S}/pub/file.iso"), (f"{S}:8080", f"http://{S}:8080/q?x=1"),
        (f"[{S6}]", f"http://[{S6}]/v6"), (S, f"http://{S}/h"), ("b.example", "http://b.example/keep")]
    assert events[:5] == [e._replace(ts=e.ts - 0.06) for e in events[5:]] and c["drop.no-host"] == 2


# -- 4. IP fragments


def ipv4_fragments(src: str, dst: str, sport: int, payload: bytes, size: int, seq: int = 1) -> list[bytes]:
    pkt = IP(src=src, dst=dst, id=sport) / TCP(sport=sport, dport=80, seq=seq, flags="PA") / Raw(payload)
    return [bytes(Ether() / f) for f in fragment(pkt, fragsize=size)]


def ipv6_fragments(src: str, dst: str, sport: int, payload: bytes, size: int) -> list[bytes]:
    pkt = IPv6(src=src, dst=dst) / IPv6ExtHdrFragment(id=sport) / TCP(sport=sport, dport=80, seq=1, flags="PA")
    return [bytes(Ether() / f) for f in fragment6(pkt / Raw(payload), size)]


def test_request_in_ip_fragments_is_reassembled() -> None:
    big = head("/frag.iso", pad=1800)
    f4 = ipv4_fragments(C, S, 40060, big, 600)
    f6 = ipv6_fragments(C6, S6, 40061, big, 700)
    assert len(f4) >= 3 and len(f6) >= 3
    r4 = ipv4_fragments(C, S, 40062, big, 600)[::-1]  # last fragment first
    dup = ipv4_fragments(C, S, 40063, big, 600)
    dup = [dup[0], dup[0], *dup[1:]]  # a fragment seen twice
    events, c = both(timed(f4 + f6 + r4 + dup))
    assert paths(events) == ["/frag.iso"] * 4 and c["defragmented"] == 4 and c["requests"] == 4
    assert events[1].host == "a.example" and c["drop.ip-fragment"] == 0


def test_fragment_bounds_timeouts_and_overlaps() -> None:
    big = head("/frag.iso", pad=1800)
    holes = ipv4_fragments(C, S, 40070, big, 600)
    overlap = ipv4_fragments(C, S, 40071, big, 600)
    # a middle fragment resent with different bytes at an offset inside another: never trusted
    bad = IP(bytes(overlap[1])[14:])
    bad.frag -= 1
    bad.len = None
    overlap[1] = bytes(Ether() / bad)
    udp = IP(src=C, dst=S, id=7, flags="MF", proto=17) / Raw(b"x" * 64)  # not TCP: not held
    late = ipv4_fragments(C, S, 40072, big, 600)
    frames = timed([holes[0], holes[2], *overlap, bytes(Ether() / udp), late[0]])
    frames += [(f, frames[-1][1] + 31.0) for f in late[1:]]  # the rest after the 30 s timeout
    events, c = both(frames)
    assert events == [] and c["drop.fragment-overlap"] == 1 and c["drop.ip-fragment"] == 1
    assert c["drop.fragment-timeout"] >= 2  # late's first fragment at expiry; holes at the end
    # at most max_datagrams waiting
    many = [ipv4_fragments(C, S, 42000 + i, big, 600)[0] for i in range(300)]
    events, c = both(timed(many))
    assert c["drop.fragments-full"] == 300 - 256


def test_fragment_table_is_pure_and_bounded_in_bytes() -> None:
    p: FrameParser = reference()
    assert p.fragments is not None
    p.fragments.max_bytes = 1000
    big = head("/frag.iso", pad=1800)
    for f in ipv4_fragments(C, S, 40080, big, 600):
        p.events(f, 1.0)
    assert p.counters["drop.fragments-full"] >= 1 and p.counters["requests"] == 0


# -- the same cases against tshark


@pytest.mark.integration  # runs the tshark program
def test_crafted_capture_equals_tshark(tmp_path: Path) -> None:
    """One capture with every case above, read by tshark with out-of-order reassembly on
    (tcp.reassemble_out_of_order; off by default in tshark 4.0, which then loses those requests)
    and by both parsers: the same requests in the same order. tshark leaves http.host empty for
    HTTP/1.0 without Host; we key it on the destination (what its full URI would name)."""
    a, b, c3 = head("/1"), head("/2"), head("/3")
    big = head("/cut.iso", pad=3000)
    frames = flow(C, S, 40000, [(0, head("/r.iso")), (0, head("/r.iso")), (len(head("/r.iso")), head("/s.iso"))])
    frames += flow(C, S, 40001, [(len(a), b), (len(a) + len(b), c3), (0, a)])
    frames += flow(C, S, 40002, [(0, big[:1400]), (2800, big[2800:]), (1400, big[1400:2800])])
    frames += flow(C6, S6, 40003, [(len(a), b), (0, a), (0, a)])
    frames.append(tcp_frame(C, S, 40004, 80, head("/pub/file.iso", None, "1.0")))
    frames += ipv4_fragments(C, S, 40005, head("/frag.iso", pad=1800), 600)
    frames += ipv6_fragments(C6, S6, 40006, head("/frag6.iso", pad=1800), 700)
    path = tmp_path / "crafted.pcap"
    write_pcap(path, frames)
    tshark = shutil.which("tshark")
    assert tshark is not None, "tshark is part of the test set-up (Debian package tshark)"
    proc = subprocess.run([tshark, "-n", "-o", "tcp.reassemble_out_of_order:TRUE", "-r", str(path), "-Y",
                           "http.request", "-T", "fields", "-E", "aggregator=|", "-e", "http.request.method",
                           "-e", "http.host", "-e", "http.request.uri"],
                          capture_output=True, text=True, check=True, timeout=120)
    theirs = [r for line in proc.stdout.splitlines()
              for r in zip(*(col.split("|") for col in line.split("\t")), strict=True)]
    want = ["/r.iso", "/s.iso", "/1", "/2", "/3", "/cut.iso", "/1", "/2", "/pub/file.iso", "/frag.iso", "/frag6.iso"]
    assert [uri for _m, _h, uri in theirs] == want
    events, _c = both([(f, 1_790_000_000 + i + (i * 7919) % 1_000_000 / 1e6) for i, f in enumerate(frames)])
    assert [(e.method, e.path) for e in events] == [(m, uri) for m, _h, uri in theirs]
    assert [e.host for e in events] == [h or S for _m, h, _uri in theirs]
