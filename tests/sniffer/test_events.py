"""Unit tests for frames -> RequestEvents (sniffer/events.py)."""

from __future__ import annotations

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from heatcache.cachekey import KeyRules
from sniffer.events import ClientHasher, FrameParser


def parser(**kw: object) -> FrameParser:
    return FrameParser(ports=frozenset({80, 8080}), rules=KeyRules.load(),
                       hasher=ClientHasher(b"k", 86400), **kw)  # type: ignore[arg-type]


def pkt(payload: bytes, src: str = "10.0.0.5", dst: str = "198.51.100.7", dport: int = 80) -> bytes:
    return bytes(Ether() / IP(src=src, dst=dst) / TCP(sport=40000, dport=dport) / Raw(payload))


def test_event_fields_and_cache_key() -> None:
    p = parser()
    evs = p.events(pkt(b"GET /v.mp4?utm_source=x HTTP/1.1\r\nHost: Video.Example:80\r\nRange: bytes=5-\r\n"
                       b"User-Agent: Mozilla/5.0\r\n\r\n"), 1000.0)
    assert len(evs) == 1
    ev = evs[0]
    assert ev.cache_key == "http://video.example/v.mp4"
    assert ev.host == "video.example" and ev.path == "/v.mp4?utm_source=x"
    assert ev.url == "http://video.example/v.mp4?utm_source=x"
    assert ev.range == "bytes=5-" and ev.ua_class == "browser" and ev.ts == 1000.0
    assert "10.0.0.5" not in ev.client and len(ev.client) == 20
    assert p.counters["requests"] == 1


def test_client_ids_are_keyed_and_rotate() -> None:
    h = ClientHasher(b"secret", 100)
    assert h.client_id("10.0.0.1", 5) == h.client_id("10.0.0.1", 99)
    assert h.client_id("10.0.0.1", 5) != h.client_id("10.0.0.2", 5)
    assert h.client_id("10.0.0.1", 5) != h.client_id("10.0.0.1", 105)  # next rotation period
    assert ClientHasher(b"other", 100).client_id("10.0.0.1", 5) != h.client_id("10.0.0.1", 5)


def test_filters_count_reasons() -> None:
    p = parser(ignore=frozenset({"192.0.2.1"}))
    assert p.events(pkt(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"), 1) == []
    assert p.events(pkt(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", dst="192.0.2.1"), 1) == []
    assert p.events(pkt(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", dport=443), 1) == []
    assert p.events(pkt(b"GET / HTTP/1.1\r\nHost: bad host\r\n\r\n"), 1) == []
    assert p.events(b"\x00\x01", 1) == []
    c = p.counters
    assert c["drop.method"] == 1 and c["drop.ignored-address"] == 1 and c["drop.other-port"] == 1
    assert c["drop.bad-url"] == 1 and c["drop.short-ethernet"] == 1 and c["packets"] == 5


def test_absolute_form_target() -> None:
    evs = parser().events(pkt(b"GET http://Proxy.Example:8080/x?gclid=1 HTTP/1.1\r\n\r\n"), 1)
    assert [e.cache_key for e in evs] == ["http://proxy.example:8080/x"]
    assert evs[0].path == "/x?gclid=1"


def test_host_and_path_rules_and_raw_ids() -> None:
    from sniffer.events import Filters

    p = parser(filters=Filters(ignore_hosts=("ads.example",), ignore_paths=("/health",)))
    assert p.events(pkt(b"GET /x HTTP/1.1\r\nHost: img.ads.example\r\n\r\n"), 1) == []
    assert p.events(pkt(b"GET /healthz HTTP/1.1\r\nHost: a.example\r\n\r\n"), 1) == []
    assert len(p.events(pkt(b"GET /x HTTP/1.1\r\nHost: notads.example\r\n\r\n"), 1)) == 1
    assert p.counters["drop.ignored-rule"] == 2
    raw = FrameParser(ports=frozenset({80}), rules=KeyRules.load(), hasher=ClientHasher(b"k", 60, raw=True))
    assert raw.events(pkt(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), 1)[0].client == "10.0.0.5"


def test_tls_client_hello_is_a_host_event() -> None:
    from sniffer.synth import client_hello

    p = parser(tls_ports=frozenset({443}))
    evs = p.events(pkt(client_hello("Video.Example.org"), dport=443), 5.0)
    assert [(e.method, e.host, e.path, e.cache_key) for e in evs] == [
        ("TLS", "video.example.org", "", "https://video.example.org/")]
    assert p.events(pkt(b"\x17\x03\x03\x00\x05hello", dport=443), 5.0) == []
    assert p.counters["drop.not-client-hello"] == 1


def test_head_split_across_segments_is_reassembled_once() -> None:
    from sniffer.synth import tcp_frame

    head = b"GET /big.iso HTTP/1.1\r\nHost: a.example\r\nCookie: " + b"c" * 3000 + b"\r\n\r\n"
    p = parser()
    assert p.events(tcp_frame("10.0.0.9", "203.0.113.1", 40000, 80, head[:1400], seq=100), 1.0) == []
    assert p.events(tcp_frame("10.0.0.9", "203.0.113.1", 40000, 80, head[1400:2800], seq=1500), 1.1) == []
    evs = p.events(tcp_frame("10.0.0.9", "203.0.113.1", 40000, 80, head[2800:], seq=2900), 1.2)
    assert [e.path for e in evs] == ["/big.iso"] and p.counters["reassembled"] == 2
    # a gap (lost segment): what follows it waits for it (it may just be late), and once the gap
    # outlives the TTL it is skipped; the partial head is dropped instead of gluing unrelated bytes
    assert p.events(tcp_frame("10.0.0.9", "203.0.113.1", 40001, 80, head[:1400], seq=100), 2.0) == []
    assert p.events(tcp_frame("10.0.0.9", "203.0.113.1", 40001, 80, head[2800:], seq=2900), 2.1) == []
    assert p.counters["out-of-order"] == 1 and p.counters["drop.reassembly-gap"] == 0
    after = b"GET /next HTTP/1.1\r\nHost: a.example\r\n\r\n"
    evs = p.events(tcp_frame("10.0.0.9", "203.0.113.1", 40001, 80, after, seq=2900 + len(head) - 2800), 8.0)
    assert [e.path for e in evs] == ["/next"]
    assert p.counters["drop.tcp-gap"] == 1 and p.counters["drop.reassembly-gap"] == 1
