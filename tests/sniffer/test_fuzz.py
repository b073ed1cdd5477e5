"""Fuzzing the sniffer's pure core (sniffer/events.py, sniffer/parse.py, and the compiled fast
path sniffer/_fastpath.c): 100k random and mutated packets through each path; no exception
escapes and every packet that yields nothing is counted by reason."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from heatcache.settings import load_settings
from sniffer.app import build_parser
from sniffer.synth import client_hello, generate, tcp_frame


def mutate(rng: random.Random, frame: bytes) -> bytes:
    data = bytearray(frame)
    for _ in range(rng.randrange(1, 6)):
        op = rng.randrange(4)
        if op == 0 and data:  # flip bits
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        elif op == 1 and data:  # truncate
            del data[rng.randrange(len(data)):]
        elif op == 2:  # insert junk
            i = rng.randrange(len(data) + 1)
            data[i:i] = rng.randbytes(rng.randrange(1, 20))
        elif data:  # overwrite a header byte with an extreme value
            i = rng.randrange(min(len(data), 80))
            data[i] = rng.choice([0, 0xFF, 0x7F, 0x80])
    return bytes(data)


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "reference"])
def test_100k_random_and_mutated_packets(compiled: bool) -> None:
    rng = random.Random(1234)
    seeds = [
        *generate(2_000, seed=3).frames,
        tcp_frame("10.0.0.1", "203.0.113.5", 40000, 443, client_hello("a.example")),
        tcp_frame("2001:db8::1", "2001:db8::2", 40001, 80, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", vlan=5),
    ]
    parser = build_parser(load_settings(client_id_secret="x", sniff_compiled=compiled))
    assert parser.compiled is compiled
    silent = Counter[str]()
    total = 0
    for i in range(100_000):
        if i % 2:
            packet = rng.randbytes(rng.randrange(0, 200))
            linktype = rng.choice([1, 1, 1, 0, 101, 113, 7])
        else:
            packet = mutate(rng, rng.choice(seeds))
            linktype = 1
        before = sum(parser.counters.values())
        events = parser.events(packet, 1_790_000_000.0 + i * 0.001, linktype)
        total += 1
        if not events:
            # "packets" went up by one; anything else that moved is the reason (or "held")
            moved = sum(parser.counters.values()) - before - 1
            if moved == 0:
                silent["unaccounted"] += 1
        for ev in events:
            assert ev.cache_key.startswith(("http://", "https://")) and ev.method in ("GET", "HEAD", "TLS")
    parser.flush()
    assert total == 100_000 and parser.counters["packets"] == 100_000
    assert silent["unaccounted"] == 0
    reasons = {k for k in parser.counters if k.startswith("drop.")}
    assert {"drop.short-ethernet", "drop.not-ip", "drop.bad-ip-length", "drop.other-port"} <= reasons
