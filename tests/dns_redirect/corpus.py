"""The malformed-DNS corpus both fuzz tests send (the server's handler and the compiled lane)."""

from __future__ import annotations

import random

import dns.message


def malformed_queries(n: int, seed: int = 99, id_share: float = 0.0) -> list[bytes]:
    """Half random bytes, half mutations of a good DNSSEC query (cut short 30% of the time).
    ``id_share`` of the mutations touch only the query id: those stay answerable."""
    rng = random.Random(seed)
    good = dns.message.make_query("cdn.lab.test", "A", want_dnssec=True).to_wire()
    packets = []
    for i in range(n):
        if i % 2:
            packets.append(rng.randbytes(rng.randrange(0, 80)))
            continue
        data = bytearray(good)
        for _ in range(rng.randrange(1, 4)):
            pos = rng.randrange(2) if id_share and rng.random() < id_share else rng.randrange(len(data))
            data[pos] = rng.randrange(256)
        if rng.random() < 0.3:
            del data[rng.randrange(len(data)):]
        if len(data) > 2:
            data[2] &= 0x07  # QR=0 and opcode QUERY: parseable ones reach the answer logic
        packets.append(bytes(data))
    return packets
