"""The sniffer as `heatcache sniff` builds it (build_parser from settings): pseudonyms labelled
with their client network, and the cache node's own addresses never published even when the
operator left them out of HEATCACHE_IGNORE_ADDRESSES (compiled path and Python reference)."""

from __future__ import annotations

from pathlib import Path

import pytest

from heatcache.networks import client_network
from heatcache.settings import load_settings
from sniffer.app import build_parser
from sniffer.events import ClientHasher, compiled_available
from sniffer.synth import tcp_frame

GET = b"GET /v.bin HTTP/1.1\r\nHost: video.example\r\n\r\n"


def test_pseudonyms_carry_their_named_network(tmp_path: Path) -> None:
    s = load_settings(state_dir=tmp_path, console_networks=("dorms=10.1.0.0/16", "desk=10.2.0.9/32"))
    h = ClientHasher.from_settings(s)
    dorm, elsewhere, desk = h.client_id("10.1.2.3", 5), h.client_id("10.7.0.1", 5), h.client_id("10.2.0.9", 5)
    assert dorm.startswith("dorms/") and client_network(dorm) == "dorms" and "10.1.2.3" not in dorm
    assert client_network(elsewhere) == "" and len(elsewhere) == 20
    assert client_network(desk) == ""  # one address: a label would name the person
    plain = ClientHasher.from_settings(s.model_copy(update={"client_id_network": False}))
    assert plain.client_id("10.1.2.3", 5) == dorm.removeprefix("dorms/")  # the same keyed hash under the label


@pytest.mark.parametrize("compiled", [False, True] if compiled_available() else [False])
def test_the_nodes_own_traffic_is_never_published(tmp_path: Path, compiled: bool) -> None:
    s = load_settings(state_dir=tmp_path, node_address="192.0.2.10", node_address6="2001:DB8::10",
                      outbound_address="192.0.2.11", sniff_compiled=compiled, sniff_ports=(80,),
                      console_networks=("dorms=10.1.0.0/16",))
    p = build_parser(s)
    assert p.compiled is compiled
    frames = [
        tcp_frame("10.1.0.5", "198.51.100.7", 40000, 80, GET, seq=1),  # a client to the origin: published
        tcp_frame("10.1.0.5", "192.0.2.10", 40001, 80, GET, seq=1),  # a steered client to the node
        tcp_frame("192.0.2.11", "198.51.100.7", 40002, 80, GET, seq=1),  # the node's own miss to the origin
        tcp_frame("2001:db8::5", "2001:db8::10", 40003, 80, GET, seq=1),  # to the node's v6 address
    ]
    events = [e for i, f in enumerate(frames) for e in p.events(f, 1000.0 + i)]
    assert [(e.host, client_network(e.client)) for e in events] == [("video.example", "dorms")]
    assert p.counters["drop.ignored-address"] == 3


@pytest.mark.skipif(not compiled_available(), reason="needs the compiled fast path (./dev builds it)")
@pytest.mark.parametrize("ignored", [
    {"10.1.0.6", "2001:db8::7", "2001:DB8::8", "010.1.0.9", "not an address"},  # packed; odd texts never match
    {f"10.2.0.{i}" for i in range(40)} | {"10.1.0.6"},  # more than the packed table holds: the set is asked
])
def test_ignored_addresses_match_alike_on_both_paths(ignored: set[str]) -> None:
    from heatcache.cachekey import KeyRules
    from sniffer.events import Filters, FrameParser

    frames = [tcp_frame(src, dst, 40000 + i, 80, GET, seq=1) for i, (src, dst) in enumerate([
        ("10.1.0.5", "198.51.100.7"), ("10.1.0.6", "198.51.100.7"), ("10.1.0.5", "10.1.0.6"),
        ("10.1.0.9", "198.51.100.7"), ("2001:db8::5", "2001:db8::7"), ("2001:db8::8", "2001:db8::5"),
        ("2001:db8::5", "2001:db8::9")])]
    out = []
    for compiled in (False, True):
        p = FrameParser(ports=frozenset({80}), rules=KeyRules.load(), hasher=ClientHasher(b"k", 3600),
                        filters=Filters(frozenset(ignored)), compiled=compiled)
        out.append(([e for f in frames for e in p.events(f, 1000.0)], p.counters["drop.ignored-address"]))
    assert out[0] == out[1]
    assert out[0][1] == (3 if len(ignored) < 10 else 2)
