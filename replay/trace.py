"""A trace in memory: RequestEvents in time order with what the log knew of each response
(bytes, status), loaded from a file or from the `requests` topic, and cut into the batches the
sniffer would have published (one partition bucket per batch).

Events are made the sniffer's way: the same cache keys (heatcache.cachekey with the configured
rules), the same keyed client pseudonyms (sniffer.events.ClientHasher.from_settings: with the
network label HEATCACHE_CLIENT_ID_NETWORK puts in front), the same methods kept.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from heatcache import contract
from heatcache.cachekey import BadUrl, KeyRules, cache_key
from heatcache.contract import RequestBatch, RequestEvent, request_event_error
from heatcache.settings import Settings
from replay.formats import MAX_LOGGED, BadLine, LogLine, guess_format, is_header, parse_line
from sniffer.events import KEEP_METHODS, TLS_METHOD, ClientHasher, Filters
from sniffer.parse import ua_class


@dataclass
class Trace:
    """Requests in time order; ``sizes``/``statuses`` parallel to ``events`` (0/0: unknown)."""

    events: list[RequestEvent] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    bad: Counter[str] = field(default_factory=Counter)  # lines not imported, by reason
    lines: int = 0

    def __len__(self) -> int:
        return len(self.events)

    def add(self, event: RequestEvent, size: int, status: int) -> None:
        self.events.append(event)
        self.sizes.append(size)
        self.statuses.append(status)

    def sort(self) -> None:
        """Time order (stable: equal times keep the log's order). Logs are nearly sorted already."""
        if all(self.events[i].ts <= self.events[i + 1].ts for i in range(len(self.events) - 1)):
            return
        order = sorted(range(len(self.events)), key=lambda i: self.events[i].ts)
        self.events = [self.events[i] for i in order]
        self.sizes = [self.sizes[i] for i in order]
        self.statuses = [self.statuses[i] for i in order]

    def extend_batch(self, batch: RequestBatch) -> None:
        n = len(batch.events)
        self.events.extend(batch.events)
        self.sizes.extend(batch.sizes or (0,) * n)
        self.statuses.extend(batch.statuses or (0,) * n)


@dataclass
class EventMaker:
    """LogLine -> RequestEvent as the sniffer makes them, or the reason it would not publish it."""

    rules: KeyRules
    hasher: ClientHasher
    filters: Filters = field(default_factory=Filters)
    _keys: dict[tuple[str, str], tuple[str, str, str, str] | str] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> EventMaker:
        # the sniffer's own hasher: the same pseudonyms, network labels included ("dorms/3f2a...")
        return cls(KeyRules.load(settings.cache_key_rules), ClientHasher.from_settings(settings),
                   Filters(frozenset(settings.ignore_addresses), settings.ignore_hosts, settings.ignore_paths))

    def event(self, line: LogLine) -> RequestEvent:
        ev = self._event(line)
        if request_event_error(ev) is not None:  # e.g. a Range or a host past the contract's caps
            raise BadLine("bad-event")  # as the sniffer does: dropped, not a whole batch poisoned
        if not (0 <= line.size < MAX_LOGGED and 0 <= line.status < MAX_LOGGED):
            raise BadLine("bad-size")  # RequestBatch.sizes/.statuses would refuse the batch
        return ev

    def _event(self, line: LogLine) -> RequestEvent:
        if line.client in self.filters.ignore_addresses:
            raise BadLine("ignored-address")
        if line.method == TLS_METHOD:
            # a host-level event: the host of an absolute target, else the line's Host (jsonl host+path)
            authority = line.target.partition("://")[2].partition("/")[0] if "://" in line.target else line.host
            host = authority.partition(":")[0].lower().rstrip(".")
            if not host:
                raise BadLine("no-host")  # an event without a host would make its whole batch undecodable
            key = f"https://{host}/"
            return RequestEvent(line.ts, self.hasher.client_id(line.client, line.ts), TLS_METHOD, host, "", key, key)
        if line.method not in KEEP_METHODS:
            raise BadLine("method")  # the sniffer publishes GET and HEAD only
        memo = self._keys.get((line.host, line.target))
        if memo is None:
            memo = self._entry(line.host, line.target)
            if len(self._keys) > 200_000:
                self._keys.clear()
            self._keys[(line.host, line.target)] = memo
        if isinstance(memo, str):
            raise BadLine(memo)
        key, authority, path, url = memo
        ua = line.ua_class or ua_class(line.user_agent)
        return RequestEvent(line.ts, self.hasher.client_id(line.client, line.ts), line.method, authority, path, url,
                            key, line.range, ua)

    def _entry(self, host: str, target: str) -> tuple[str, str, str, str] | str:
        try:
            key = cache_key(host, target, self.rules)
        except BadUrl:
            return "bad-url"
        authority = key.split("/")[2]
        path = target if target.startswith("/") else "/" + target.partition("://")[2].partition("/")[2]
        if self.filters.host_ignored(authority.partition(":")[0]) or self.filters.path_ignored(path):
            return "ignored-rule"
        scheme = key.partition("://")[0]
        return key, authority, path, f"{scheme}://{authority}{path}"


def read_lines(lines: Iterable[str], fmt: str, maker: EventMaker, default_host: str = "") -> Trace:
    """Parse every line; bad ones are counted by reason in ``trace.bad``."""
    trace = Trace()
    for line in lines:
        if is_header(fmt, line):
            continue
        trace.lines += 1
        try:
            rec = parse_line(fmt, line, default_host)
            ev = maker.event(rec)
        except BadLine as exc:
            trace.bad[exc.reason] += 1
            continue
        trace.add(ev, rec.size, rec.status)
    trace.sort()
    return trace


def read_pcap(path: Path, settings: Settings) -> Trace:
    """A capture through the sniffer's own parser (sizes unknown: the sniffer sees requests only).
    ``lines`` counts packets; ``bad`` the packets that gave no request, by the sniffer's reason."""
    from sniffer.app import build_parser
    from sniffer.capture import pcap_event_batches

    counters: Counter[str] = Counter()
    parser = build_parser(settings, counters)
    trace = Trace()
    for events, _last in pcap_event_batches(path, parser):
        for ev in events:
            trace.add(ev, 0, 0)
    parser.flush()
    # the sniffer's drop reasons under the names the text formats use ("drop.method" -> "method");
    # reasons it only declares (count 0) are not reported
    trace.bad.update({k.removeprefix("drop."): v for k, v in counters.items() if k.startswith("drop.") and v})
    trace.lines = counters.get("packets", 0)  # a capture's "lines" are its packets
    trace.sort()
    return trace


def read_file(path: Path, settings: Settings, fmt: str = "auto", default_host: str = "") -> tuple[Trace, str]:
    """A trace from a log or capture file; the format used."""
    if fmt == "auto":
        first = ""
        if not path.name.lower().endswith((".pcap", ".pcapng")):
            with open(path, encoding="utf-8", errors="replace") as fh:
                first = next((ln for ln in fh if ln.strip() and not ln.startswith("#")), "")
        fmt = guess_format(path.name, first)
    if fmt == "pcap":
        return read_pcap(path, settings), fmt
    with open(path, encoding="utf-8", errors="replace") as fh:
        return read_lines(fh, fmt, EventMaker.from_settings(settings), default_host), fmt


def batches(trace: Trace, partitions: int, max_events: int = 500, linger_s: float = 0.2) -> Iterator[RequestBatch]:
    """Cut a time-ordered trace into per-bucket batches as the sniffer's BatchPublisher does: a
    bucket goes out when full or when its first event is ``linger_s`` older (event time here).
    Batches come out in the order they are closed."""
    pending: dict[int, list[int]] = {}
    first: dict[int, float] = {}
    events, sizes, statuses = trace.events, trace.sizes, trace.statuses

    def close(bucket: int) -> RequestBatch:
        idx = pending.pop(bucket)
        first.pop(bucket, None)
        if len(idx) == 1:  # most batches of a sparse trace (a list comprehension per field cost more)
            i = idx[0]
            return RequestBatch(bucket, (events[i],), (sizes[i],), (statuses[i],))
        return RequestBatch(bucket, tuple([events[i] for i in idx]), tuple([sizes[i] for i in idx]),
                            tuple([statuses[i] for i in idx]))

    memo: dict[str, int] = {}
    for i, ev in enumerate(events):
        for b in [b for b, t in first.items() if ev.ts - t >= linger_s]:
            yield close(b)
        bucket = memo.get(ev.cache_key)
        if bucket is None:
            if len(memo) > 500_000:
                memo.clear()
            bucket = memo[ev.cache_key] = contract.bucket_of(ev.cache_key, partitions)
        items = pending.setdefault(bucket, [])
        if not items:
            first[bucket] = ev.ts
        items.append(i)
        if len(items) >= max_events:
            yield close(bucket)
    for b in sorted(first, key=first.__getitem__):
        yield close(b)
