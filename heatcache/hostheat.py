"""Host heat over all `requests` partitions: the pure merge of HostHeat records.

A host's requests are spread over the partitions (keys are partitioned by cache key), and each
partition's worker publishes the host's heat in that partition (contract.HostHeat, one record
per host and partition). Requests and TLS requests add up; distinct clients do not (a client
may be counted in several partitions), so every record also carries the HyperLogLog registers
of its window's clients (``sketch``, base64): the registers of the union are the per-register
maxima, and :func:`merged_clients` estimates the union's size from them (standard error
1.04 / sqrt(2^p): 3.3% at the default HEATCACHE_HEAT_SKETCH_P=10; exact-ish below a few
hundred clients thanks to linear counting). Readers (console, steering) use :func:`merge`.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


def encode_sketch(registers: bytes) -> str:
    return base64.b64encode(registers).decode("ascii")


def decode_sketch(text: str) -> bytes | None:
    """The registers of a record's sketch; None when absent or malformed (older producers)."""
    if not text:
        return None
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) >= 16 and len(raw) & (len(raw) - 1) == 0 else None


def union_registers(sketches: Iterable[bytes]) -> bytes | None:
    """Register-wise maximum (the sketch of the union); None if none or their sizes differ."""
    out: bytes | None = None
    for regs in sketches:
        if out is None:
            out = regs
        elif len(regs) != len(out):
            return None
        else:
            out = bytes(map(max, out, regs))
    return out


def estimate(registers: bytes) -> int:
    """HyperLogLog cardinality of dense registers (Flajolet et al., linear counting when small)."""
    m = len(registers)
    alpha = {16: 0.673, 32: 0.697, 64: 0.709}.get(m, 0.7213 / (1 + 1.079 / m))
    z = sum(registers.count(v) * 2.0 ** -v for v in set(registers))
    e = alpha * m * m / z
    zeros = registers.count(0)
    if e <= 2.5 * m and zeros:
        e = m * math.log(m / zeros)
    return round(e)


@dataclass(frozen=True, slots=True)
class HostTotals:
    host: str
    requests: int
    tls: int
    clients: int  # distinct over all partitions (estimate), or the largest partition's if no sketch
    merged: bool  # clients is the union's estimate (every record had a sketch)

    @property
    def http_share(self) -> float:
        return (self.requests - self.tls) / self.requests if self.requests else 0.0


def merge(host: str, records: Iterable[Mapping[str, Any] | Any]) -> HostTotals:
    """The totals of one host over the latest record of each partition (dicts or HostHeat)."""
    req = tls = top = 0
    sketches: list[bytes] = []
    complete = True
    for rec in records:
        get = rec.get if isinstance(rec, Mapping) else lambda k, d=None, r=rec: getattr(r, k, d)
        req += int(get("requests", 0) or 0)
        tls += int(get("tls", 0) or 0)
        clients = int(get("clients", 0) or 0)
        top = max(top, clients)
        regs = decode_sketch(str(get("sketch", "") or ""))
        if regs is None:
            complete = complete and clients == 0
        else:
            sketches.append(regs)
    union = union_registers(sketches) if complete and sketches else None
    if union is None:
        return HostTotals(host, req, tls, top, False)
    return HostTotals(host, req, tls, max(top, estimate(union)), True)
