"""Event-time hopping windows of heat: requests, TLS share, bytes and distinct clients.

Pure data, no I/O and no clock: every function is given the event times it needs.

Time is cut into panes of ``step_s`` seconds (pane = ts // step_s). A window of ``window_s``
seconds ending at the watermark is the ``window_s / step_s`` newest panes; with step = window it
is a tumbling window, with a small step it slides. Each :class:`Heat` keeps, per pane, the
requests, the TLS requests and the bytes, and the distinct clients:

* exactly (client -> newest pane it was seen in) while there are at most ``client_cap`` of them;
* past the cap, one HyperLogLog per pane (the ``HLL`` package, C, 2^p registers), merged over
  the panes of a window to count it.

Both are idempotent: adding a client twice changes nothing, so re-reading messages after a
crash cannot inflate distinct counts (requests and bytes could; the stage skips messages whose
offsets its durable state already holds, see streams/app.py).

The watermark of a partition is the newest event time seen in it. An event up to ``grace_s``
older than the watermark is counted in its own pane; an older one is counted as late and
dropped. Panes older than ``expiry_s`` behind the watermark are dropped; a heat with no pane
left is expired.
"""

from __future__ import annotations

import base64
import math
import struct
from dataclasses import dataclass
from typing import Any

from HLL import HyperLogLog


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """How heat is windowed. ``window_s`` is the longest window any rule may ask for."""

    window_s: int = 24 * 3600
    step_s: int = 3600
    grace_s: int = 300
    expiry_s: int = 0  # 0 = window_s + grace_s: keep exactly what a window can still need
    client_cap: int = 64  # exact distinct clients up to this many, then a sketch
    sketch_p: int = 10  # 2^p registers: standard error 1.04 / sqrt(2^p) (3.3% at 10)
    max_ahead_s: int = 0  # events further ahead of the watermark are refused (0 = any); see PartitionHeat.fold

    def __post_init__(self) -> None:
        if self.step_s <= 0 or self.window_s <= 0 or self.window_s % self.step_s:
            raise ValueError("window_s must be a positive multiple of step_s")
        if self.grace_s < 0:
            raise ValueError("grace_s must be >= 0")
        if self.expiry_s and self.expiry_s < self.window_s + self.grace_s:
            raise ValueError("expiry_s must be at least window_s + grace_s")
        if self.client_cap < 1:
            raise ValueError("client_cap must be >= 1")
        if not 4 <= self.sketch_p <= 18:
            raise ValueError("sketch_p must be in 4..18")
        if self.max_ahead_s < 0:
            raise ValueError("max_ahead_s must be >= 0")

    @property
    def retention_s(self) -> int:
        return self.expiry_s or self.window_s + self.grace_s

    def pane(self, ts: float) -> int:
        return int(ts // self.step_s)

    def first_pane(self, watermark: float, window_s: int) -> int:
        """The oldest pane of the ``window_s`` window that ends at ``watermark``."""
        return self.pane(watermark) - max(1, window_s // self.step_s) + 1


@dataclass(frozen=True, slots=True)
class WindowStats:
    """What a window holds for one key or host."""

    requests: int
    tls: int
    bytes: int
    clients: int
    window_s: int

    @property
    def http_share(self) -> float:
        return (self.requests - self.tls) / self.requests if self.requests else 0.0


class Heat:
    """The windowed heat of one cache key or host (mutable; owned by one partition's state)."""

    __slots__ = ("_rows", "clients", "panes", "sketches")

    def __init__(self) -> None:
        self.panes: dict[int, list[int]] = {}  # pane -> [requests, tls requests, bytes]
        self.clients: dict[str, int] | None = {}  # client -> newest pane (exact mode)
        self.sketches: dict[int, HyperLogLog] | None = None  # pane -> sketch (past the cap)
        # pane -> (the sketch's registers, its durable row) when last written: a sketch whose
        # registers did not change is not serialized again (only the newest pane usually does)
        self._rows: dict[int, tuple[bytes, list[Any]]] | None = None

    def add(self, pane: int, client: str, tls: bool, nbytes: int, spec: WindowSpec) -> None:
        """Count one request in ``pane`` (the caller has checked it is not too late)."""
        counts = self.panes.get(pane)
        if counts is None:
            counts = self.panes[pane] = [0, 0, 0]
        counts[0] += 1
        if tls:
            counts[1] += 1
        counts[2] += nbytes
        clients = self.clients
        if clients is not None:
            seen = clients.get(client)
            if seen is None or seen < pane:  # not a -1 default: panes before 0 exist (ts < 0)
                clients[client] = pane
                if len(clients) > spec.client_cap:
                    self._to_sketches(spec)
        else:
            self._sketch(pane, spec).add(client)

    def add_many(self, events: list[Any], step: int, nbytes: int, spec: WindowSpec) -> float:
        """Count several requests (RequestEvents) at once; the newest event time. Same result as
        :meth:`add` per event, with one pane lookup per run of events in the same pane."""
        panes = self.panes
        clients = self.clients
        last_pane: int | None = None  # not -1: that is the pane of ts in [-step, 0)
        counts: list[int] = []
        newest = -math.inf
        cap = spec.client_cap
        sketch_pane: int | None = None
        sketch: Any = None
        for ev in events:
            ts, client, method = ev[0], ev[1], ev[2]
            if ts > newest:
                newest = ts
            pane = int(ts // step)
            if pane != last_pane:
                got = panes.get(pane)
                if got is None:
                    got = panes[pane] = [0, 0, 0]
                counts, last_pane = got, pane
            counts[0] += 1
            if method == "TLS":
                counts[1] += 1
            if nbytes:
                counts[2] += nbytes
            if clients is not None:
                seen = clients.get(client)
                if seen is None or seen < pane:
                    clients[client] = pane
                    if len(clients) > cap:
                        self._to_sketches(spec)
                        clients = None
            else:
                if pane != sketch_pane:
                    sketch, sketch_pane = self._sketch(pane, spec), pane
                sketch.add(client)
        return newest

    def _sketch(self, pane: int, spec: WindowSpec) -> HyperLogLog:
        assert self.sketches is not None
        sk = self.sketches.get(pane)
        if sk is None:
            sk = self.sketches[pane] = HyperLogLog(spec.sketch_p)
        return sk

    def _to_sketches(self, spec: WindowSpec) -> None:
        # A client goes into the sketch of the newest pane it was seen in: windows only move
        # forward, so that pane is in every window that could still count it.
        clients = self.clients or {}
        self.clients = None
        self.sketches = {}
        for client, pane in clients.items():
            self._sketch(pane, spec).add(client)

    def stats(self, first_pane: int, window_s: int) -> WindowStats:
        """Totals over the panes from ``first_pane`` on."""
        req = tls = nbytes = 0
        for pane, counts in self.panes.items():
            if pane >= first_pane:
                req += counts[0]
                tls += counts[1]
                nbytes += counts[2]
        return WindowStats(req, tls, nbytes, self.distinct(first_pane), window_s)

    def distinct(self, first_pane: int) -> int:
        if self.clients is not None:
            return sum(1 for p in self.clients.values() if p >= first_pane)
        assert self.sketches is not None
        panes = [sk for p, sk in self.sketches.items() if p >= first_pane]
        if not panes:
            return 0
        if len(panes) == 1:
            return int(panes[0].cardinality())
        merged = HyperLogLog(panes[0].size().bit_length() - 1)
        for sk in panes:
            merged.merge(sk)
        return int(merged.cardinality())

    def window_registers(self, first_pane: int, sketch_p: int) -> bytes:
        """The HyperLogLog registers (2^sketch_p bytes) of the distinct clients from ``first_pane``
        on, exact or sketched alike: sketches of the same host from several partitions merge by
        taking each register's maximum (heatcache.hostheat.merged_clients)."""
        merged = HyperLogLog(sketch_p)
        if self.clients is not None:
            for client, pane in self.clients.items():
                if pane >= first_pane:
                    merged.add(client)
        else:
            assert self.sketches is not None
            for pane, sk in self.sketches.items():
                if pane >= first_pane:
                    merged.merge(sk)
        return merged.registers()

    def newest_pane(self) -> int:
        return max(self.panes) if self.panes else -1

    def expire(self, oldest_pane: int) -> bool:
        """Drop panes before ``oldest_pane``; True when nothing is left (the heat can go)."""
        if self.panes and min(self.panes) < oldest_pane:
            self.panes = {p: c for p, c in self.panes.items() if p >= oldest_pane}
        if self.clients is not None:
            if self.clients and min(self.clients.values()) < oldest_pane:
                self.clients = {c: p for c, p in self.clients.items() if p >= oldest_pane}
        else:
            assert self.sketches is not None
            self.sketches = {p: s for p, s in self.sketches.items() if p >= oldest_pane}
            if not self.sketches:  # every sketched client aged out: back to exact counting
                self.clients, self.sketches = {}, None
        return not self.panes

    # -- durable form (JSON-able; sketches by sketch_state: packed when dense, else HLL's pickle state)
    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"p": [[p, *c] for p, c in self.panes.items()]}
        if self.clients is not None:
            out["c"] = self.clients
        else:
            assert self.sketches is not None
            rows = self._rows
            if rows is None:
                rows = self._rows = {}
            out_rows = []
            for p, sk in self.sketches.items():
                regs = sk.registers()
                cached = rows.get(p)
                if cached is None or cached[0] != regs:
                    cached = rows[p] = (regs, [p, *sketch_state(sk, regs)])
                out_rows.append(cached[1])
            if len(rows) > len(self.sketches):
                for p in [p for p in rows if p not in self.sketches]:
                    del rows[p]
            out["s"] = out_rows
        return out

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Heat:
        heat = cls()
        heat.panes = {int(row[0]): [int(row[1]), int(row[2]), int(row[3])] for row in body["p"]}
        if "c" in body:
            heat.clients = {str(c): int(p) for c, p in body["c"].items()}
        else:
            heat.clients = None
            heat.sketches = {}
            for pane, args, state in body["s"]:
                heat.sketches[int(pane)] = sketch_from_state(args, state)
        return heat


# A sketch's durable state, packed. HLL's pickle state (its __reduce__) is a list of 72 + 2^p
# ints (or [index, value] pairs when sparse), 50-80 us to build and encode per sketch: most of a
# flush when many keys are past the cap. The same fields from HLL's own accessors (meta,
# histogram, registers) are a few us; restoring rebuilds the identical pickle state (tests hold
# __reduce__ equal), so a restored sketch counts exactly as the one written.
_HEAD = struct.Struct("<5Q")  # is_sparse, added, sparse count, is_cached, cached estimate
_HIST = struct.Struct("<65Q")  # HLL's register histogram


def sketch_state(sk: HyperLogLog, regs: bytes | None = None) -> tuple[list[int], Any]:
    """(constructor args, state) of a sketch for the durable JSON: a base64 str packing HLL's
    fields, histogram and registers (``regs``: sk.registers(), taken just before). Falls back
    to HLL's own pickle state (a list) if a sparse sketch's entries are not its non-zero
    registers (never seen; checked so a restore cannot differ)."""
    if regs is None:
        regs = sk.registers()  # first: in sparse mode it merges HLL's buffer, as __reduce__ does
    meta = sk._get_meta()
    sparse = meta["is_sparse"]
    if sparse and len(regs) - regs.count(0) != meta["list_size"]:
        _cls, args, state = sk.__reduce__()
        return list(args), state
    packed = (_HEAD.pack(sparse, meta["added"], meta["list_size"], meta["is_cached"], meta["cache"])
              + _HIST.pack(*sk._histogram()) + regs)
    return [sk.size().bit_length() - 1, sk.seed(), sparse], base64.b64encode(packed).decode("ascii")


def sketch_from_state(args: list[int], state: Any) -> HyperLogLog:
    """The sketch of :func:`sketch_state`'s output (or of an older record's pickle state)."""
    sk = HyperLogLog(*args)
    if isinstance(state, str):
        raw = base64.b64decode(state)
        regs_at = _HEAD.size + _HIST.size
        if len(raw) != regs_at + sk.size():
            raise ValueError("a packed sketch state of the wrong size")
        sparse, added, count, is_cached, cache = _HEAD.unpack_from(raw)
        regs = raw[regs_at:]
        body: list[Any] = [[i, r] for i, r in enumerate(regs) if r] if sparse else list(regs)
        if sparse and len(body) != count:
            raise ValueError("a packed sparse sketch whose registers do not match its count")
        state = [sparse, added, count, is_cached, cache, 0, 0, *_HIST.unpack_from(raw, _HEAD.size), *body]
    sk.__setstate__(state)
    return sk
