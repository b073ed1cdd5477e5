"""The compiled fast path (sniffer/_fastpath.c) against its Python reference (sniffer/parse.py,
sniffer/events.py, scapy's pcap reader): same segments, same request heads, same events and the
same drop counters, on generated traffic and on a mutation/hypothesis fuzz corpus.

The extension is imported unconditionally: a failed build fails here instead of silently
falling back to the slow path.
"""

from __future__ import annotations

import random
import struct
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heatcache.cachekey import KeyRules
from heatcache.settings import load_settings
from sniffer import _fastpath  # imported unconditionally: no skip, the build must work
from sniffer.app import build_parser
from sniffer.capture import pcap_batches, pcap_event_batches, pcap_frames
from sniffer.events import ClientHasher, Filters, FrameParser, compiled_available
from sniffer.parse import parse_frame, parse_requests
from sniffer.synth import client_hello, generate, tcp_frame
from tests.sniffer.test_fuzz import mutate

HEADS = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /x?utm_source=1&k=2 HTTP/1.1\r\nHost: A.Example:80\r\nUser-Agent: curl/8\r\nRange: bytes=1-\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /after HTTP/1.1\r\nhost:\tb \t\r\n\r\n",
    b"HEAD http://h.example:8080/abs HTTP/1.0\r\n\r\n",
    b"GET /\xff HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nbroken line\n\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: \x0b12\x0c\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nUser-Agent: \xe9t\xe9\r\nHost: a\r\n\r\nGE",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
]


def reference(rotation_s: int = 3600, raw: bool = False, **kw: object) -> FrameParser:
    return FrameParser(ports=frozenset({80, 8080}), rules=KeyRules.load(), hasher=ClientHasher(b"k", rotation_s, raw),
                       compiled=False, **kw)  # type: ignore[arg-type]


def compiled(rotation_s: int = 3600, raw: bool = False, **kw: object) -> FrameParser:
    return FrameParser(ports=frozenset({80, 8080}), rules=KeyRules.load(), hasher=ClientHasher(b"k", rotation_s, raw),
                       compiled=True, **kw)  # type: ignore[arg-type]


def same_frames(frames: list[tuple[bytes, float, int]], **kw: object) -> Counter[str]:
    """Both parsers over the frames: identical events per frame and identical counters. The
    compiled one decides most frames inside C (FastPath) and hands the rest to Python."""
    ref, fast = reference(**kw), compiled(**kw)
    for frame, ts, linktype in frames:
        assert fast.events(frame, ts, linktype) == ref.events(frame, ts, linktype), (frame, linktype)
    ref.flush()
    fast.flush()
    assert fast.counters == ref.counters
    return fast.counters


def test_extension_is_built_and_default() -> None:
    assert compiled_available()
    assert build_parser(load_settings(client_id_secret="x")).compiled is True
    assert build_parser(load_settings(client_id_secret="x", sniff_compiled=False)).compiled is False


def check_frame(frame: bytes, linktype: int) -> None:
    ref = parse_frame(frame, linktype)
    got = _fastpath.parse_frame(frame, linktype)
    assert got == (ref if isinstance(ref, str) else tuple(ref)), (frame, linktype)


def check_requests(payload: bytes) -> None:
    reqs, rejects, rest = parse_requests(payload)
    assert _fastpath.parse_requests(payload) == ([tuple(r) for r in reqs], rejects, rest), payload


def test_parse_functions_on_mutated_corpus() -> None:
    """80k frames and 80k payloads: random bytes on every link type, mutated real frames."""
    rng = random.Random(99)
    seeds = [*generate(1_000, seed=4).frames,
             tcp_frame("2001:db8::1", "2001:db8::2", 40001, 80, HEADS[1], vlan=5)]
    for i in range(80_000):
        if i % 3 == 0:
            frame, linktype = rng.randbytes(rng.randrange(0, 120)), rng.choice([1, 0, 101, 113, 7, 2**70])
        else:
            frame, linktype = mutate(rng, rng.choice(seeds)), 1
        check_frame(frame, linktype)
        check_requests(mutate(rng, rng.choice(HEADS)) if i % 2 else rng.choice(seeds)[54:])


def test_parse_requests_edge_cases() -> None:
    for payload in [*HEADS, b"", b"\r\n", b"G", b"GET", b"GET /", b"XYZ /", b"GET " + b"a" * 20_000,
                    b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n" * 3, b"GET /a HTTP/1.1\r\nHost: a\r\nRange:\r\n\r\n",
                    b"GET /a HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\nGET"]:
        check_requests(payload)


header_line = st.sampled_from([b"Host: a.example", b"host:b", b"HOST :  c ", b"Range: bytes=0-", b"User-Agent: x",
                               b"Content-Length: 0", b"Content-Length: 4", b"content-length: x", b"X-A: 1", b"bad",
                               b"", b"Host: \x80", b"\n"])


@settings(max_examples=3_000, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([b"GET", b"HEAD", b"POST", b"GE", b"get", b"PUT"]),
                          st.sampled_from([b"/", b"/a?b=1", b"http://x/y", b"", b"/\x7f", b"/ /"]),
                          st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2", b""]),
                          st.lists(header_line, max_size=4),
                          st.sampled_from([b"\r\n\r\n", b"\r\n", b"", b"\r\n\r\nabcd"])), min_size=1, max_size=3),
       st.integers(0, 200))
def test_parse_requests_hypothesis(heads: list[tuple[bytes, bytes, bytes, list[bytes], bytes]], cut: int) -> None:
    payload = b"".join(m + b" " + t + b" " + v + b"".join(b"\r\n" + h for h in hs) + end for m, t, v, hs, end in heads)
    check_requests(payload)
    check_requests(payload[:cut])
    check_requests(payload[cut:])


@settings(max_examples=2_000, deadline=None)
@given(st.binary(max_size=100), st.sampled_from([0, 1, 101, 113, 228]))
def test_parse_frame_hypothesis(data: bytes, linktype: int) -> None:
    check_frame(data, linktype)
    check_frame(tcp_frame("10.0.0.1", "10.0.0.2", 1, 80, b"")[:14] + data, 1)


def test_frame_parser_on_generated_traffic() -> None:
    traffic = generate(8_000, seed=21)
    frames = [(f, 1_790_000_000.0 + i * 1e-4, 1) for i, f in enumerate(traffic.frames)]
    c = same_frames(frames, tls_ports=frozenset({443}))
    assert c["requests"] >= 8_000 and c["reassembled"] > 100 and c["tls-hosts"] > 100
    # client-id periods rolling over every 60 s of capture time, and raw addresses
    spread = [(f, 1_790_000_000.0 + i * 0.05, 1) for i, f in enumerate(traffic.frames)]
    assert same_frames(spread, rotation_s=60)["requests"] >= 8_000
    assert same_frames(frames, raw=True)["requests"] >= 8_000
    # ignored addresses alone (the C side checks them; query keys still computed in C)
    c = same_frames(frames, ignore=frozenset({"203.0.113.7", "203.0.113.8", "2001:db8:99::80"}))
    assert c["drop.ignored-address"] > 100
    # with every filter on: ignored addresses, hosts, paths (the Python-side decisions)
    busy = Counter(traffic.requests).most_common(1)[0][0][1].partition(":")[0]
    c = same_frames(frames, tls_ports=frozenset({443}),
                    filters=Filters(frozenset({"203.0.113.7", "2001:db8:99::80"}), (busy,), ("/files/1/",)))
    assert c["drop.ignored-address"] > 100 and c["drop.ignored-rule"] > 100


def test_frame_parser_on_mutated_traffic() -> None:
    """60k mutated and random frames through both FrameParsers: events and counters agree."""
    rng = random.Random(7)
    seeds = [*generate(1_500, seed=8).frames, tcp_frame("10.0.0.1", "203.0.113.5", 40000, 443, client_hello("a.b"))]
    head = b"GET /big HTTP/1.1\r\nHost: a.example\r\nCookie: " + b"c" * 100 + b"\r\n\r\n"
    frames = []
    for i in range(60_000):
        ts = 1_790_000_000.0 + i * 0.001
        if i % 7 == 0:  # a head cut in two, sometimes with a gap or out of order
            seq = rng.getrandbits(32)
            cut = rng.randrange(1, len(head))
            first = tcp_frame("10.1.0.1", "203.0.113.9", 41000 + i % 50, 80, head[:cut], seq=seq)
            second = tcp_frame("10.1.0.1", "203.0.113.9", 41000 + i % 50, 80, head[cut:],
                               seq=seq + cut + rng.choice([0, 0, 0, 1]))
            frames += [(first, ts, 1), (second, ts + rng.choice([0.0, 0.0, 9.0]), 1)]
        elif i % 2:
            frames.append((rng.randbytes(rng.randrange(0, 200)), ts, rng.choice([1, 1, 0, 101, 113, 7])))
        else:
            frames.append((mutate(rng, rng.choice(seeds)), ts, 1))
    c = same_frames(frames, tls_ports=frozenset({443}), max_partial=64)
    assert c["reassembled"] > 1000 and c["drop.reassembly-gap"] > 100


def write_pcap(path: Path, frames: list[bytes], big: bool = False, linktype: int = 1) -> None:
    end = ">" if big else "<"
    with open(path, "wb") as fh:
        fh.write(struct.pack(end + "IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype))
        for i, frame in enumerate(frames):
            fh.write(struct.pack(end + "IIII", 1_790_000_000 + i, (i * 7919) % 1_000_000, len(frame), len(frame)))
            fh.write(frame)


@pytest.mark.parametrize("big", [False, True])
def test_pcap_reader_matches_scapy(tmp_path: Path, big: bool) -> None:
    frames = [*generate(300, seed=2).frames, b"", b"\x00" * 70_000]
    path = tmp_path / "c.pcap"
    write_pcap(path, frames, big=big, linktype=113)
    ref = list(pcap_frames(path, compiled=False))
    assert list(pcap_frames(path, compiled=True)) == ref and len(ref) == len(frames)
    assert len(ref[-1][0]) == 65535  # cut at scapy's MTU, as RawPcapReader does
    path.write_bytes(path.read_bytes()[:-69_990])  # a short last record is kept as it is
    assert list(pcap_frames(path, compiled=True)) == list(pcap_frames(path, compiled=False))


def test_pcapng_falls_back_to_scapy(tmp_path: Path) -> None:
    from scapy.utils import PcapNgWriter

    path = tmp_path / "c.pcapng"
    with PcapNgWriter(str(path)) as w:
        for f in generate(20, seed=1).frames:
            w.write(f)
    assert list(pcap_frames(path, compiled=True)) == list(pcap_frames(path, compiled=False))


def test_fast_path_decides_repeated_frames_in_c() -> None:
    """Once the memos know the URLs and clients, HTTP frames never leave C (FastPath)."""
    frames = generate(3_000, seed=5).frames
    parser = compiled()
    for i, f in enumerate(frames):
        parser.events(f, 1_790_000_000.0 + i * 1e-4, 1)
    fast = parser._fast_events
    assert fast is not None
    parser._next.clear()  # the same frames again as new flows, not as retransmissions
    parser.flush()
    decided = sum(fast(f, 1_790_000_000.5, 1) is not None for f in frames)
    assert parser.counters["drop.retransmission"] == 0
    assert decided > 0.85 * len(frames)


HOSTS = ["a.example", "A.Example.ORG", "a.example:80", "a.example:0080", "a.example:8080", "a.example:0",
         "a.example:65536", "a.example:", "a..example", "-a.example", "a-.example", "_x.example", "a.example.",
         "a.example...:81", "[::1]:8080", "[::1", "[zz]", " a.example ", "\x0ba.example\x1f", "a" * 63 + ".b",
         "a" * 64 + ".b", ("a" * 62 + ".") * 4 + "b", ("a" * 62 + ".") * 4 + "bb", "", "a b", "a:b:c", "1.2.3.4:99"]
TARGETS = ["/", "/a?b=1&utm_source=2", "/a#f?utm_x=1", "/a?x#y&utm_source=1", "/a?&&k=&", "*", "x/y",
           "http://Proxy.Example:81/x?gclid=1", "https://s.example/p", "/p?%75tm_source=1&a+b=2", "/p?UTM_SOURCE=1",
           "/p?sid=1&SID=2&sidx=3", "/dl?mh=1&x=2"]


def test_cache_keys_and_tls_names_computed_in_c_match_reference() -> None:
    """Host headers and targets at the edges of split_host/cache_key, and server names at the
    edges of the TLS path, through both parsers twice (first sight, then memo hits)."""
    frames = []
    for rnd in (0, 1):  # the second round on the same flows, next in sequence: memo hits, not resends
        for i, host in enumerate([*HOSTS, "dl.google.com", "download.windowsupdate.com"]):
            # the variants: known parameter names with new values, keyed in C from the per-name memo
            for j, target in enumerate([*TARGETS, *(t.replace("1", "7") for t in TARGETS)]):
                head = f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
                frames.append(tcp_frame(f"10.9.{i}.{j + 1}", "203.0.113.1", 40000 + j, 80, head,
                                        seq=1 + rnd * len(head)))
            name = host.replace(" ", "").replace("\x0b", "").replace("\x1f", "")
            frames.append(tcp_frame(f"10.8.{i}.1", "203.0.113.2", 40000, 443, client_hello(name or None)))
        frames.append(tcp_frame("10.8.0.9", "203.0.113.2", 40000, 443, client_hello("caf\u00e9.example")))
    timed = [(f, 1_790_000_000.0 + i * 0.01, 1) for i, f in enumerate(frames)]
    c = same_frames(timed, tls_ports=frozenset({443}))
    assert c["requests"] > 200 and c["drop.bad-url"] > 100 and c["tls-hosts"] > 20 and c["drop.bad-sni"] > 5


@settings(max_examples=1_500, deadline=None)
@given(st.integers(0, 200), st.integers(0, 255), st.integers(0, 120), st.sampled_from(["a.example", "B.c", "x" * 70]))
def test_client_hello_cuts_and_bytes_hypothesis(cut: int, value: int, where: int, name: str) -> None:
    hello = client_hello(name)
    mutated = bytearray(hello[:cut] if cut else hello)
    if where < len(mutated):
        mutated[where] = value
    frame = tcp_frame("10.0.0.1", "203.0.113.5", 40000, 443, bytes(mutated))
    same_frames([(frame, 1_790_000_000.0, 1), (frame, 1_790_000_000.0, 1)], tls_ports=frozenset({443}))


@pytest.mark.parametrize("compiled_path", [True, False], ids=["compiled", "reference"])
def test_events_many_over_pcap_batches_equals_events_per_frame(tmp_path: Path, compiled_path: bool) -> None:
    """What `heatcache sniff` does with a capture file: batches from pcap_batches through
    events_many (one C call per batch), against the reference frame by frame."""
    traffic = generate(6_000, seed=13)
    path = tmp_path / "g.pcap"
    traffic.write_pcap(path)
    ref = reference(tls_ports=frozenset({443}))
    want = [ev for f, ts, lt in pcap_frames(path, compiled=False) for ev in ref.events(f, ts, lt)]
    batched = FrameParser(ports=frozenset({80, 8080}), rules=KeyRules.load(), hasher=ClientHasher(b"k", 3600),
                          tls_ports=frozenset({443}), compiled=compiled_path)
    got = [ev for batch in pcap_batches(path, compiled_path, size=500) for ev in batched.events_many(batch)]
    ref.flush()
    batched.flush()
    assert got == want and len(want) > 6_000
    assert batched.counters == ref.counters


@pytest.mark.parametrize("big", [False, True])
def test_pcap_event_batches_equal_reference(tmp_path: Path, big: bool) -> None:
    """pcap_event_batches (frames from the memory map straight into C) against the reference
    frame by frame: same events, same counters, and the capture time of each batch's last frame."""
    traffic = generate(5_000, seed=17)
    frames = [*traffic.frames, b"", b"\x00" * 70_000, tcp_frame("10.0.0.1", "203.0.113.5", 40000, 443,
                                                                 client_hello("x.example"))]
    path = tmp_path / "g.pcap"
    write_pcap(path, frames, big=big)
    ref = reference(tls_ports=frozenset({443}))
    records = list(pcap_frames(path, compiled=False))
    want = [ev for f, ts, lt in records for ev in ref.events(f, ts, lt)]
    fast = compiled(tls_ports=frozenset({443}))
    got, lasts = [], []
    for events, last in pcap_event_batches(path, fast, size=700):
        got += events
        lasts.append(last)
    ref.flush()
    fast.flush()
    assert got == want and len(want) > 5_000
    assert fast.counters == ref.counters
    assert lasts == [records[min(i + 699, len(records) - 1)][1] for i in range(0, len(records), 700)]
    # pcapng (and the reference parser) go through pcap_batches + events_many
    ng = tmp_path / "g.pcapng"
    from scapy.utils import PcapNgWriter

    with PcapNgWriter(str(ng)) as w:
        for f in traffic.frames[:300]:
            w.write(f)
    a, b = compiled(), reference()
    got_ng = [ev for evs, _ in pcap_event_batches(ng, a) for ev in evs]
    assert got_ng == [ev for evs, _ in pcap_event_batches(ng, b) for ev in evs] and len(got_ng) > 200
    assert a.counters == b.counters


host_text = st.text(alphabet="aB9.-_:[]x ", min_size=0, max_size=12)
param = st.tuples(st.sampled_from(["utm_source", "UTM_X", "sid", "sidx", "token", "%75tm_a", "a+b", "mh", "", "k"]),
                  st.sampled_from(["", "=", "=1", "=a=b", "=%20"]))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["GET", "HEAD", "POST"]), host_text,
                          st.sampled_from(["/", "/a", "/a#f", "*", "http://h.example/x", "/p/q.iso"]),
                          st.lists(param, max_size=4), st.sampled_from(["", "#frag", "&", "&&"]),
                          st.sampled_from(["curl/8", "Mozilla/5.0", "", "caf\xe9"])), min_size=1, max_size=12),
       st.sampled_from(["dl.google.com", "download.windowsupdate.com", "a.example"]))
def test_requests_hypothesis_through_both_parsers(reqs: list[tuple[str, str, str, list[tuple[str, str]], str, str]],
                                                  known_host: str) -> None:
    """Random hosts, targets and query strings, each sent twice (first sight, then memo hits),
    some on a host with site rules: the compiled parser's events and counters equal the
    reference's."""
    heads = []
    for i, (method, host, path, params, tail, ua) in enumerate(reqs):
        query = "&".join(n + v for n, v in params)
        target = path + ("?" + query if params else "") + tail
        for h in (host, known_host):
            heads.append((i, f"{method} {target} HTTP/1.1\r\nHost: {h}\r\nUser-Agent: {ua}\r\n\r\n".encode("latin-1")))
    frames, seqs = [], Counter[int]()
    for i, head in heads * 2:  # each flow's heads one after the other in sequence: the second round hits the memos
        frames.append(tcp_frame(f"10.7.0.{i + 1}", "203.0.113.3", 41000 + i, 80, head, seq=1 + seqs[i]))
        seqs[i] += len(head)
    timed = [(f, 1_790_000_000.0 + i * 0.01, 1) for i, f in enumerate(frames)]
    same_frames(timed)
