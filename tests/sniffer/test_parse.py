"""Unit tests for byte-level parsing (sniffer/parse.py), checked against scapy-built packets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

from heatcache.tls import parse_sni
from sniffer.parse import LINKTYPE_ETHERNET, LINKTYPE_RAW, Segment, parse_frame, parse_requests
from sniffer.synth import client_hello

GET = b"GET /a/b.iso?x=1 HTTP/1.1\r\nHost: example.com\r\nRange: bytes=0-99\r\nUser-Agent: curl/8\r\n\r\n"


def frame(pkt: object) -> bytes:
    return bytes(pkt)  # type: ignore[call-overload]


def test_ipv4_tcp_payload() -> None:
    seg = parse_frame(frame(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=4000, dport=80) / Raw(GET)))
    assert seg == Segment("10.0.0.1", "10.0.0.2", 4000, 80, GET, 0, 0x02)  # scapy: SYN


def test_ipv6_with_extension_header_and_vlan() -> None:
    pkt = (Ether() / Dot1Q(vlan=7) / IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrHopByHop()
           / TCP(sport=5, dport=8080) / Raw(GET))
    seg = parse_frame(frame(pkt))
    assert isinstance(seg, Segment)
    assert (seg.src, seg.dst, seg.dport, seg.payload) == ("2001:db8::1", "2001:db8::2", 8080, GET)


def test_qinq_and_raw_linktype() -> None:
    pkt = Ether() / Dot1Q(vlan=1) / Dot1Q(vlan=2) / IP() / TCP(dport=80) / Raw(b"x")
    assert isinstance(parse_frame(frame(pkt)), Segment)
    assert isinstance(parse_frame(frame(IP() / TCP(dport=80) / Raw(b"x")), LINKTYPE_RAW), Segment)


def test_ethernet_padding_is_not_payload() -> None:
    pkt = frame(Ether() / IP() / TCP(dport=80)) + b"\x00" * 6  # minimum-size frame padding
    seg = parse_frame(pkt)
    assert isinstance(seg, Segment) and seg.payload == b""


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "short-ethernet"),
        (frame(Ether() / IP() / UDP(dport=53)), "not-tcp"),
        (frame(Ether(type=0x0806) / Raw(b"\x00" * 28)), "not-ip"),
        (frame(Ether() / IP(flags="MF") / TCP() / Raw(b"x")), "ip-fragment"),
        (frame(Ether() / IP() / TCP())[:30], "short-ip"),
        (frame(Ether() / IP(len=500) / TCP()), "bad-ip-length"),
    ],
)
def test_rejections_have_reasons(data: bytes, reason: str) -> None:
    assert parse_frame(data, LINKTYPE_ETHERNET) == reason


def test_http_request_fields() -> None:
    reqs, rejects, rest = parse_requests(GET)
    assert rejects == [] and rest == b""
    assert len(reqs) == 1
    r = reqs[0]
    assert (r.method, r.target, r.host, r.range, r.user_agent) == ("GET", "/a/b.iso?x=1", "example.com",
                                                                   "bytes=0-99", "curl/8")


def test_pipelined_requests_and_bodies() -> None:
    post = b"POST /form HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
    head = b"HEAD /h HTTP/1.1\r\nHost: b\r\n\r\n"
    reqs, rejects, rest = parse_requests(GET + post + head + GET + GET[:20])
    assert [r.method for r in reqs] == ["GET", "POST", "HEAD", "GET"]
    assert rejects == [] and rest == GET[:20]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\x16\x03\x01\x02\x00binary", "not-http"),
        (b"GET /a SPDY/3\r\nHost: a\r\n\r\n", "bad-version"),
        (b"GET /a HTTP/1.1\r\nNoColonHere\r\n\r\n", "bad-header"),
        (b"GET /a HTTP/1.1\r\nUser-Agent: x\r\n\r\n", "no-host"),
        (b"GET /a HTTP/1.1\r\nHost: a\r\nContent-Length: -3\r\n\r\n", "bad-content-length"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 20000 + b"\r\n\r\n", "head-too-large"),
    ],
)
def test_http_rejections(payload: bytes, reason: str) -> None:
    reqs, rejects, rest = parse_requests(payload)
    assert reqs == [] and rejects == [reason] and rest == b""


@pytest.mark.parametrize("cut", [1, 2, 3, 4, 10, 30, len(GET) - 1])
def test_split_request_is_handed_back_never_misparsed(cut: int) -> None:
    first, second = GET[:cut], GET[cut:]
    assert parse_requests(first) == ([], [], first)
    reqs, _, _ = parse_requests(second)
    assert reqs == []  # the tail alone is not taken for a request
    whole, _, _ = parse_requests(first + second)
    assert [r.target for r in whole] == ["/a/b.iso?x=1"]


def test_sni_of_a_client_hello() -> None:
    # SNI extraction is checked against tshark on a whole capture in tests/sniffer/test_tshark.py
    assert parse_sni(client_hello("video.example.org")) == "video.example.org"
    assert parse_sni(client_hello(None)) is None
    assert parse_sni(GET) is None
    hello = client_hello("video.example.org")
    assert all(parse_sni(hello[:i]) in (None, "video.example.org") for i in range(len(hello)))


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([0, 1, 101, 113, 999]))
def test_random_bytes_never_raise(data: bytes, linktype: int) -> None:
    seg = parse_frame(data, linktype)
    assert isinstance(seg, (Segment, str))
    if isinstance(seg, Segment):
        reqs, rejects, rest = parse_requests(seg.payload)
        assert isinstance(reqs, list) and isinstance(rejects, list) and isinstance(rest, bytes)
        parse_sni(seg.payload)


@settings(max_examples=1000, deadline=None)
@given(st.integers(min_value=0, max_value=len(GET) + 54), st.binary(min_size=1, max_size=4))
def test_mutated_packets_never_raise(pos: int, junk: bytes) -> None:
    base = frame(Ether() / IP() / TCP(dport=80) / Raw(GET))
    mutated = base[:pos] + junk + base[pos + len(junk):]
    seg = parse_frame(mutated)
    if isinstance(seg, Segment):
        parse_requests(seg.payload)
