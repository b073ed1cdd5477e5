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
