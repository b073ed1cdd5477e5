"""The heat of one partition: folds `requests` batches into windows and decides admissions.

Pure: no Kafka, no Faust, no clock. The Faust shell (streams/app.py) owns one
:class:`PartitionHeat` per assigned partition, feeds it messages with their offsets, and
makes the dirty keys durable once per flush interval; replay can drive the same class.

State per partition: the heat of each cache key (:class:`KeyHeat`: windows, last URL, the
event time of its last admission), the heat of each host seen in the partition (HTTP and TLS
events), the watermark and the offset of the last message folded (``applied``). A message
whose offset is at or below ``applied`` was already folded into the durable state and is
skipped: re-reading after a crash counts nothing twice.

The counting part of :meth:`PartitionHeat.fold` and the state encoding of
:meth:`PartitionHeat.take_dirty` have a compiled twin (streams/_fold.c) working on the same
objects; this Python code is their reference (tests/streams/test_fold_compiled.py holds the
two to identical results). ``PartitionHeat(compiled=False)`` runs the reference.
"""

from __future__ import annotations

import heapq
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from operator import itemgetter
from typing import Any

import orjson

from heatcache.contract import HotUrl, RequestEvent, event_time_error
from streams.rules import CacheView, Decision, Rules, decide
from streams.windows import Heat, WindowSpec

try:
    from streams import _fold
except ImportError:  # not built (no compiler): the Python reference does the same, slower
    _fold = None  # type: ignore[assignment]

ADMISSIBLE = frozenset({"GET", "HEAD"})


def compiled_available() -> bool:
    """Whether the compiled fold (streams._fold) was built and imports."""
    return _fold is not None


def rows_decoder() -> Callable[[bytes | None], list[Any] | None] | None:
    """The compiled decode of plain `requests` messages (streams._fold.rows) when built: a
    message's events as tuples equal to the contract's RequestEvents, or None for any message
    outside its plain subset (the caller decodes those with heatcache.contract)."""
    return None if _fold is None else _fold.rows

TLS = "TLS"


class KeyHeat(Heat):
    """Heat of one cache key plus what admission needs to remember."""

    __slots__ = ("admitted", "url")

    def __init__(self) -> None:
        # Heat.__init__'s fields set here (no super() call: a key is made per new cache key)
        self.panes = {}
        self.clients = {}
        self.sketches = None
        self._rows = None
        self.url = ""
        self.admitted = 0.0  # event time of the last admission (0 = never)

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        out["u"] = self.url
        out["a"] = self.admitted
        return out

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> KeyHeat:
        base = Heat.from_json(body)
        heat = cls()
        heat.panes, heat.clients, heat.sketches = base.panes, base.clients, base.sketches
        heat.url = str(body.get("u", ""))
        heat.admitted = float(body.get("a", 0.0))
        return heat


def admission_id(cache_key: str, ts: float) -> str:
    """The id of one admission: the key and the event time it was admitted at. A HotUrl sent
    again for the same admission (after a crash) carries the same id."""
    return f"{cache_key}@{ts:.6f}"


@dataclass
class FoldResult:
    """What one message did: HotUrls to send and the decisions behind them."""

    hot: list[HotUrl] = field(default_factory=list)
    skipped: bool = False  # already in the durable state (offset <= applied)
    late: int = 0
    events: int = 0
    future: int = 0  # events refused: too far ahead of the watermark (WindowSpec.max_ahead_s)
    future_reason: str = ""  # contract.event_time_error's reason for the first of them


Loader = Callable[[str], bytes | None]


class PartitionHeat:
    """All heat of one `requests` partition.

    Durable form: the keys (and, separately, the hosts) are spread over ``slots`` records by a
    hash of their name; a flush writes each slot that changed as one record holding every key
    of the slot. The number of state records per flush is then bounded by the slots, not by
    the distinct keys (the per-key JSON is cached between flushes, so a slot costs little more
    to write than its changed keys)."""

    def __init__(self, partition: int, rules: Rules, load: Loader | None = None,
                 cache: dict[str, CacheView] | None = None, slots: int = 64, host_heat: bool = True,
                 compiled: bool | None = None) -> None:
        self.partition = partition
        # the compiled fold and encoder (streams/_fold.c): None = when built; True = required
        if compiled and _fold is None:
            raise ImportError("streams._fold is not built (./dev builds it; needs gcc and Python headers)")
        self.compiled = _fold is not None if compiled is None else compiled
        # host heat is reported (host-heat topic), never admitted on: replay, which only needs
        # the admissions, turns it off (the HotUrls are the same either way)
        self.host_heat = host_heat
        self.rules = rules
        self.spec: WindowSpec = rules.spec
        self.slots = slots
        self.keys: dict[str, KeyHeat] = {}
        self._hosts: dict[str, Heat] = {}
        self.watermark = 0.0
        self.applied = -1
        self.late = 0
        self.future = 0  # events refused as too far ahead (not durable: a counter)
        self.dirty_keys: set[str] = set()
        self._dirty_hosts: set[str] = set()
        self._touched_hosts: set[str] = set()  # since the shell last published host heat
        # host heat is counted in bulk (see apply_hosts): the messages' events not counted yet
        self._host_batches: list[tuple[Any, float]] = []
        self._host_pending = 0
        self.expired_keys: set[str] = set()
        self.expired_hosts: set[str] = set()
        self._load = load
        self._slot_keys: dict[int, set[str]] = {}
        # without a loader (replay) no slot is ever loaded: a new key skips the slot bookkeeping
        # and _slot_keys is rebuilt from keys when read (take_dirty); True = not up to date
        self._slot_keys_stale = False
        self._slot_hosts: dict[int, set[str]] = {}
        self._loaded_key_slots: set[int] = set()
        self._loaded_host_slots: set[int] = set()
        self._json: dict[str, bytes] = {}  # serialized state of keys not changed since written
        # what `cache-events` says, fed by the shell; one dict shared by a worker's partitions
        self.cache: dict[str, CacheView] = cache if cache is not None else {}
        self.pins: Callable[[str, str], str] | None = None  # operator pins (console's control topic)

    # -- durable form
    def meta_json(self) -> bytes:
        return orjson.dumps({"w": self.watermark, "o": self.applied, "l": self.late})

    def restore_meta(self, raw: bytes | None) -> None:
        if raw:
            body = orjson.loads(raw)
            self.watermark, self.applied, self.late = float(body["w"]), int(body["o"]), int(body["l"])

    def slot_of(self, name: str) -> int:
        return zlib.crc32(name.encode("utf-8", "surrogatepass")) % self.slots

    def key_record(self, slot: int) -> str:
        return f"{KEY_PREFIX}{self.partition}:{slot}"

    def host_record(self, slot: int) -> str:
        return f"{HOST_PREFIX}{self.partition}:{slot}"

    def key(self, cache_key: str) -> KeyHeat:
        heat = self.keys.get(cache_key)
        if heat is None:
            if self._load is None:
                heat = self.keys[cache_key] = KeyHeat()
                self._slot_keys_stale = True
                return heat
            slot = self.slot_of(cache_key)
            if slot not in self._loaded_key_slots:
                self._loaded_key_slots.add(slot)
                raw = self._load(self.key_record(slot))
                members = self._slot_keys.setdefault(slot, set())
                for name, body in (orjson.loads(raw) if raw else {}).items():
                    self.keys[name] = KeyHeat.from_json(body)
                    members.add(name)
                heat = self.keys.get(cache_key)
            if heat is None:
                heat = self.keys[cache_key] = KeyHeat()
                self._slot_keys.setdefault(slot, set()).add(cache_key)
        return heat

    def host(self, host: str) -> Heat:
        heat = self._hosts.get(host)
        if heat is None:
            slot = self.slot_of(host)
            if slot not in self._loaded_host_slots:
                self._loaded_host_slots.add(slot)
                raw = self._load(self.host_record(slot)) if self._load else None
                members = self._slot_hosts.setdefault(slot, set())
                for name, body in (orjson.loads(raw) if raw else {}).items():
                    self._hosts[name] = Heat.from_json(body)
                    members.add(name)
                heat = self._hosts.get(host)
            if heat is None:
                heat = self._hosts[host] = Heat()
                self._slot_hosts.setdefault(slot, set()).add(host)
        return heat

    # -- folding
    def fold(self, offset: int, events: Iterable[RequestEvent], sizes: Callable[[str], int] | None = None,
             now: float | None = None) -> FoldResult:
        """Fold one message (its offset and events); return the HotUrls it admits.

        ``now`` (the live worker passes its clock; replay does not): events further than
        ``spec.max_ahead_s`` ahead of max(watermark, now) are refused (counted in ``future``).

        Admission is decided once per key per message, after all its events are counted, at the
        partition's watermark; the HotUrl's ts is the newest event of that key in the message."""
        result = FoldResult()
        if offset <= self.applied:
            result.skipped = True
            return result
        spec = self.spec
        batch = events if isinstance(events, (tuple, list)) else tuple(events)
        result.events = n = len(batch)
        wm = self.watermark
        newest = batch[0][0] if n == 1 else max([ev[0] for ev in batch]) if n else wm
        ahead = spec.max_ahead_s
        if ahead and n and now is not None:
            # one event far in the future (a wrong clock, a forged event) must not move the window
            # for good: it would make every later event late. Judged against the watermark and the
            # caller's clock (the watermark alone would refuse everything after a quiet hour).
            ref = max(wm, now)
            if newest > ref + ahead:
                kept = [ev for ev in batch if ev[0] <= ref + ahead]
                result.future = n - len(kept)
                result.future_reason = event_time_error(newest, ref, ahead) or ""
                self.future += result.future
                result.events = n = len(kept)
                batch = kept
                newest = max([ev[0] for ev in batch]) if n else wm
        if newest > wm:
            wm = newest
        too_old = wm - spec.grace_s
        if self.compiled:
            late, touched = self._fold_compiled(batch, too_old, wm, sizes)
        else:
            late, touched = self._fold_reference(batch, too_old, sizes)
        self.watermark = wm
        self.applied = offset
        result.late = late
        self.late += late
        rule_for_key = self.rules.rule_for_key
        cache = self.cache
        unanswered = self.rules.backoff.unanswered_s
        for ck, kh, ts in touched:
            # cheap necessary conditions first: most keys of a message are far from any rule
            if kh.admitted:
                view = cache.get(ck)
                if (view is None or view.fetching) and not (unanswered and wm >= kh.admitted + unanswered):
                    continue  # admitted, no cache event since: being fetched
            if kh.clients is not None and self.pins is None:
                rule = rule_for_key(ck)
                if not rule.first_access and len(kh.clients) < rule.min_clients:
                    continue  # fewer clients ever seen than the rule needs in its window
            decision = self.decide(ck, kh)
            if decision.admit:
                result.hot.append(self._admit(ck, kh, ts, decision))
        return result

    def _fold_reference(self, batch: Any, too_old: float, sizes: Callable[[str], int] | None
                        ) -> tuple[int, list[tuple[str, KeyHeat, float]]]:
        """Count the events (the reference of streams._fold.fold): late ones, then GET/HEAD
        events in their key's heat (every event in its host's heat later, see apply_hosts);
        the touched keys."""
        spec = self.spec
        step = spec.step_s
        by_key: dict[str, list[RequestEvent]] = {}
        late = 0
        key_get = by_key.get
        if self.host_heat:
            self._defer_hosts(batch, too_old)
        for ev in batch:
            ts, _client, method, _host, _path, _url, ck = ev[:7]
            if ts < too_old:
                late += 1
                continue
            if method == "GET" or method == "HEAD":  # TLS and other methods: heat of the host only
                group = key_get(ck)
                if group is None:
                    by_key[ck] = [ev]
                else:
                    group.append(ev)
        keys = self.keys
        touched: list[tuple[str, KeyHeat, float]] = []
        for ck, group in by_key.items():
            kh = keys.get(ck) or self.key(ck)
            ts = kh.add_many(group, step, sizes(ck) if sizes else 0, spec)
            kh.url = group[-1][5]  # the url of the key's newest request in the message
            touched.append((ck, kh, ts))
        self.dirty_keys.update(by_key)
        return late, touched

    def _fold_compiled(self, batch: Any, too_old: float, wm: float, sizes: Callable[[str], int] | None
                       ) -> tuple[int, list[tuple[str, KeyHeat, float]]]:
        """The same counting in C; it also leaves out the keys fold's cheap checks would skip."""
        if self.host_heat:
            self._defer_hosts(batch, too_old)
        fold, args = self.fold_call()
        args[0], args[1], args[9], args[14] = batch, too_old, sizes, wm
        late, touched = fold(*args)
        return late, touched

    def fold_call(self) -> tuple[Any, list[Any]]:
        """streams._fold.fold and the 17 arguments ``_fold_compiled`` calls it with, the batch,
        too_old, sizes and the watermark (0, 1, 9, 14) left None for the caller (replay's
        compiled loop makes this call itself, without a Python frame per batch)."""
        spec = self.spec
        default = self.rules.default
        # the "fewer exact clients than the rule needs" shortcut is only safe for one plain rule
        min_clients = (default.min_clients if self.rules.plain and self.pins is None and not default.first_access
                       else -1)
        return _fold.fold, [None, None, spec.step_s, spec, spec.client_cap, self.keys, self.key, None, self.host,
                            None, self.dirty_keys, self._dirty_hosts, self._touched_hosts, self.cache, None,
                            self.rules.backoff.unanswered_s, min_clients]

    # -- host heat, counted in bulk. Every event counts in its host's heat, but host heat is only
    # read when reported (host-heat records, streams-top) or written (its slots, expiry): the
    # messages are kept (with the too-old bound of their time) and counted per host over many
    # messages at once. The heat is the same as counting each message at once (the same events
    # in the same order per host); reading `hosts`, `dirty_hosts` or `touched_hosts` counts
    # what is pending first. Measured: per-message host groups were about half of the fold.
    def _defer_hosts(self, batch: Any, too_old: float) -> None:
        self._host_batches.append((batch, too_old))
        self._host_pending += len(batch)
        if self._host_pending >= HOST_BULK_EVENTS:  # bounded memory: the events are kept alive
            self.apply_hosts()

    def apply_hosts(self) -> None:
        """Count the pending events in their hosts' heat (see above)."""
        batches, self._host_batches, self._host_pending = self._host_batches, [], 0
        if not batches:
            return
        spec = self.spec
        if self.compiled:
            _fold.fold_hosts(batches, spec.step_s, spec, spec.client_cap, self._hosts, self.host,
                             self._dirty_hosts, self._touched_hosts)
            return
        by_host: dict[str, list[RequestEvent]] = {}
        get = by_host.get
        for batch, too_old in batches:
            for ev in batch:
                if ev[0] < too_old:
                    continue
                group = get(ev[3])
                if group is None:
                    by_host[ev[3]] = [ev]
                else:
                    group.append(ev)
        for name, group in by_host.items():
            (self._hosts.get(name) or self.host(name)).add_many(group, spec.step_s, 0, spec)
        self._dirty_hosts.update(by_host)
        self._touched_hosts.update(by_host)

    @property
    def hosts(self) -> dict[str, Heat]:
        self.apply_hosts()
        return self._hosts

    @property
    def dirty_hosts(self) -> set[str]:
        self.apply_hosts()
        return self._dirty_hosts

    @dirty_hosts.setter
    def dirty_hosts(self, value: set[str]) -> None:
        self.apply_hosts()
        self._dirty_hosts = value

    @property
    def touched_hosts(self) -> set[str]:
        self.apply_hosts()
        return self._touched_hosts

    @touched_hosts.setter
    def touched_hosts(self, value: set[str]) -> None:
        self.apply_hosts()
        self._touched_hosts = value

    def decide(self, cache_key: str, kh: KeyHeat) -> Decision:
        view = self.cache.get(cache_key)
        if view is None:
            view = CacheView(fetching=kh.admitted > 0)
        unanswered = self.rules.backoff.unanswered_s
        if view.fetching and unanswered and self.watermark >= kh.admitted + unanswered:
            view = replace(view, fetching=False)  # no answer to the admission: admit it again
        pin = self.pins(cache_key, _host_of(cache_key)) if self.pins else ""
        return decide(self.rules, cache_key, kh, view, self.watermark, pin)

    def _admit(self, ck: str, kh: KeyHeat, ts: float, decision: Decision) -> HotUrl:
        kh.admitted = ts
        view = self.cache.get(ck, CacheView())
        self.cache[ck] = replace(view, fetching=True)
        stats = decision.stats
        assert stats is not None
        return HotUrl(cache_key=ck, url=kh.url or ck, host=_host_of(ck), heat=stats.requests,
                      clients=stats.clients, window_s=stats.window_s, ts=ts, reason=decision.reason,
                      admission=admission_id(ck, ts))

    # -- what the cache says (from `cache-events`); seen_at: the watermark when read
    def on_cache_event(self, cache_key: str, state: str, seen_at: float) -> None:
        failures = 0
        if state == "failed":  # (the old view read only here: replay calls this per store and eviction)
            old = self.cache.get(cache_key)
            failures = old.failures + 1 if old is not None else 1
        self.cache[cache_key] = CacheView(state, seen_at, failures, False)

    # -- expiry and flushing
    def expire(self) -> None:
        """Drop panes behind the retention, and keys/hosts left empty (their slots are rewritten)."""
        oldest = self.spec.pane(self.watermark - self.spec.retention_s) + 1
        for ck in [k for k, h in self.keys.items() if h.expire(oldest)]:
            del self.keys[ck]
            if not self._slot_keys_stale:
                self._slot_keys.get(self.slot_of(ck), set()).discard(ck)
            self._json.pop(ck, None)
            self.dirty_keys.discard(ck)
            self.expired_keys.add(ck)
        for host in [k for k, h in self.hosts.items() if h.expire(oldest)]:
            del self.hosts[host]
            self._slot_hosts.get(self.slot_of(host), set()).discard(host)
            self.dirty_hosts.discard(host)
            self.expired_hosts.add(host)

    def take_dirty(self, hosts: bool = True) -> list[tuple[str, bytes | None]]:
        """The records that make the state durable since the last call: every slot with a
        changed key (None = the slot is empty now), with ``hosts`` every slot with a changed
        host, then the partition's meta record (watermark, applied offset).

        Host heat is reported, never admitted on: the shell may write it less often (then a
        crash loses or re-counts at most that much host heat; key heat is exact either way)."""
        out: list[tuple[str, bytes | None]] = []
        if self._slot_keys_stale:
            self._slot_keys = {}
            for ck in self.keys:
                self._slot_keys.setdefault(self.slot_of(ck), set()).add(ck)
            self._slot_keys_stale = False
        js = self._json
        for ck in self.dirty_keys:
            js.pop(ck, None)
        slots = {self.slot_of(k) for k in self.dirty_keys} | {self.slot_of(k) for k in self.expired_keys}
        dumps, keys = orjson.dumps, self.keys
        for slot in slots:
            members = self._slot_keys.get(slot)
            if not members:
                out.append((self.key_record(slot), None))
                continue
            if self.compiled:
                out.append((self.key_record(slot), _fold.encode_slot(members, keys, js, _heat_json, True)))
                continue
            parts = []
            for ck in members:
                raw = js.get(ck)
                if raw is None:
                    raw = js[ck] = dumps(keys[ck].to_json())
                parts.append(dumps(ck) + b":" + raw)
            # the slot's JSON object put together from the keys' cached JSON (no re-encoding)
            out.append((self.key_record(slot), b"{" + b",".join(parts) + b"}"))
        self.dirty_keys, self.expired_keys = set(), set()
        if hosts:
            slots = {self.slot_of(h) for h in self.dirty_hosts} | {self.slot_of(h) for h in self.expired_hosts}
            for slot in slots:
                members = self._slot_hosts.get(slot) or set()
                if not members:
                    out.append((self.host_record(slot), None))
                elif self.compiled:
                    out.append((self.host_record(slot), _fold.encode_slot(members, self.hosts, None, _heat_json,
                                                                          False)))
                else:
                    hbody = {h: self.hosts[h].to_json() for h in members}
                    out.append((self.host_record(slot), orjson.dumps(hbody)))
            self.dirty_hosts, self.expired_hosts = set(), set()
        out.append((meta_key(self.partition), self.meta_json()))
        return out

    def host_stats(self, host: str) -> Any:
        heat = self.hosts[host]
        return heat.stats(self.spec.first_pane(self.watermark, self.spec.window_s), self.spec.window_s)

    def top_keys(self, n: int) -> list[tuple[str, int]]:
        """The ``n`` keys with the most requests in the window (ties in the keys' order)."""
        first = self.spec.first_pane(self.watermark, self.spec.window_s)
        if self.compiled:  # every key each metrics interval: ~70 ms for 18k keys here, ~2 in C
            return _fold.top_keys(self.keys, first, n)  # type: ignore[no-any-return]
        sums = []
        for ck, h in self.keys.items():
            total = 0
            for p, c in h.panes.items():
                if p >= first:
                    total += c[0]
            sums.append((ck, total))
        return heapq.nlargest(n, sums, key=itemgetter(1))


def _heat_json(heat: Heat) -> bytes:
    """A heat's durable JSON (what the compiled encoder falls back to for sketches)."""
    return orjson.dumps(heat.to_json())


def _host_of(cache_key: str) -> str:
    host = cache_key.partition("://")[2].partition("/")[0]
    return host.rpartition("@")[2].split(":")[0] if not host.startswith("[") else host.partition("]")[0] + "]"


HOST_BULK_EVENTS = 20_000  # host heat counted at least every this many events of a partition

KEY_PREFIX = "k:"
HOST_PREFIX = "h:"
META_PREFIX = "m:"


def meta_key(partition: int) -> str:
    return f"{META_PREFIX}{partition}"
