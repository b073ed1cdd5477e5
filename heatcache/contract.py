"""The contract between stages: event types, their JSON encoding, and the logical topic names.

Every event is a frozen dataclass encoded with orjson as one JSON object carrying ``v`` (the
schema version). Decoding is strict: anything that is not a well-formed event of a known version
raises :class:`DecodeError`, which consumers turn into a ``dead-letter`` record. Each event type
is registered with :func:`event_type` and a declarative field spec (type, range, size of every
field), so a field of the wrong type, a bool where a number belongs, a non-finite number, an
over-long URL or an unknown cache state never reaches a stage's logic.

Checks that need running state are pure functions the consumer calls with that state:
:func:`heatcache.cachekey.key_mismatch` (the key must be what the running cache-key rules make
of the URL) and :func:`event_time_error` (an event far ahead of its stream's watermark).
"""

from __future__ import annotations

import dataclasses
import math
import re
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, TypeVar

import orjson

SCHEMA_VERSION = 1

# Logical topic names; Settings.topic(name) gives the configured, prefixed name.
REQUESTS = "requests"
HOT_URLS = "hot-urls"
CACHE_EVENTS = "cache-events"
FETCH_PROGRESS = "fetch-progress"
METRICS = "metrics"
DEAD_LETTER = "dead-letter"
CONTROL = "control"  # operator switches (pins, prefetch pause, steering stop); compacted
HOST_HEAT = "host-heat"  # heat per host (HTTP and TLS) from streams, keyed by host
ALL_TOPICS = (REQUESTS, HOT_URLS, CACHE_EVENTS, FETCH_PROGRESS, METRICS, DEAD_LETTER, CONTROL, HOST_HEAT)
COMPACTED_TOPICS = frozenset({CACHE_EVENTS, CONTROL})

CacheState = Literal["cached", "failed", "evicted", "purged", "stale"]
CACHE_STATES: frozenset[str] = frozenset({"cached", "failed", "evicted", "purged", "stale"})

# Size caps (characters). A URL or key longer than these is refused everywhere, so no stage ever
# stores an object under a key that differs from what it fetched (aria2c and databases truncate).
MAX_URL_LEN = 8192
MAX_KEY_LEN = 8192
MAX_HOST_LEN = 262  # 253 for the name + ":65535", or a bracketed IPv6 literal with a port
MAX_TEXT_LEN = 1024  # short free-text fields (reasons, errors, user-agent class, ...)
MAX_HEADER_LEN = 8192  # origin header values carried as they were sent (ETag, Content-Type, ...)
MAX_BATCH_EVENTS = 100_000
MAX_TS = 4_102_444_800.0  # 2100-01-01: event times are seconds since the epoch, not ms


class DecodeError(ValueError):
    """A message that is not a valid event of this contract."""


# -- declarative field specs ------------------------------------------------------------------

Check = Callable[[Any], Any]  # returns the (possibly converted) value or raises DecodeError


def Str(max_len: int = MAX_TEXT_LEN, *, min_len: int = 0, choices: frozenset[str] | None = None) -> Check:
    """A JSON string of ``min_len``..``max_len`` characters (optionally one of ``choices``)."""

    def check(value: Any) -> str:
        if type(value) is not str:
            raise DecodeError(f"must be a string, got {type(value).__name__}")
        if not min_len <= len(value) <= max_len:
            raise DecodeError(f"length {len(value)} outside {min_len}..{max_len}")
        if choices is not None and value not in choices:
            raise DecodeError(f"{value[:40]!r} is not one of {sorted(choices)}")
        return value

    return check


def Int(ge: int = 0, le: int = 2**63 - 1) -> Check:
    """A JSON integer in ``ge``..``le`` (a bool or a float is refused)."""

    def check(value: Any) -> int:
        if type(value) is not int:
            raise DecodeError(f"must be an integer, got {type(value).__name__}")
        if not ge <= value <= le:
            raise DecodeError(f"{value} outside {ge}..{le}")
        return value

    return check


def Float(ge: float = 0.0, le: float = math.inf) -> Check:
    """A finite JSON number in ``ge``..``le`` (integers accepted and converted; bools refused)."""

    def check(value: Any) -> float:
        if type(value) is not float and type(value) is not int:
            raise DecodeError(f"must be a number, got {type(value).__name__}")
        out = float(value)
        if not math.isfinite(out) or not ge <= out <= le:
            raise DecodeError(f"{value} outside {ge}..{le}")
        return out

    return check


def Bool() -> Check:
    def check(value: Any) -> bool:
        if type(value) is not bool:
            raise DecodeError(f"must be true or false, got {type(value).__name__}")
        return value

    return check


def url_error(url: str) -> str | None:
    """Why ``url`` cannot be carried in an event (None if it can): http(s), no credentials,
    no whitespace or control characters, at most MAX_URL_LEN characters."""
    if len(url) > MAX_URL_LEN:
        return f"URL longer than {MAX_URL_LEN} characters"
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("http", "https"):
        return "not an http(s) URL"
    if any(c <= " " or c == "\x7f" for c in url):
        return "whitespace or control characters in URL"
    authority = rest.partition("/")[0].partition("?")[0].partition("#")[0]
    if "@" in authority:
        return "credentials in URL"  # never carried: they would reach logs, events and the catalog
    if not authority:
        return "URL without a host"
    return None


def Url(max_len: int = MAX_URL_LEN, *, empty: bool = False) -> Check:
    """An absolute http(s) URL without credentials (``empty``: "" also allowed)."""

    def check(value: Any) -> str:
        if type(value) is not str:
            raise DecodeError(f"must be a string, got {type(value).__name__}")
        if empty and not value:
            return value
        if len(value) > max_len:
            raise DecodeError(f"URL longer than {max_len} characters")
        reason = url_error(value)
        if reason:
            raise DecodeError(reason)
        return value

    return check


TS = Float(0.0, MAX_TS)
KEY = Url(MAX_KEY_LEN)
HOST = Str(MAX_HOST_LEN, min_len=1)


@dataclass(frozen=True)
class EventSpec:
    """How one event kind is checked: a check per field, which fields may be left out."""

    kind: str
    cls: type[Any]
    checks: Mapping[str, Check]
    required: frozenset[str]


_SPECS: dict[type[Any], EventSpec] = {}
_KINDS: dict[str, type[Any]] = {}
_KIND_OF: dict[type[Any], str] = {}
C = TypeVar("C")


def event_type(kind: str, **checks: Check) -> Callable[[type[C]], type[C]]:
    """Register a frozen dataclass as event ``kind`` with one check per field.

    Every field must have a check (a forgotten field is an error at import, not a hole in
    decoding). Other packages add their event types the same way::

        @event_type("host-heat", host=HOST, heat=Int(), ts=TS)
        @dataclass(frozen=True, slots=True)
        class HostHeat: ...
    """

    def register(cls: type[C]) -> type[C]:
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        if set(fields) != set(checks):
            raise TypeError(f"{cls.__name__}: checks for {sorted(checks)} but fields {sorted(fields)}")
        if kind in _KINDS:
            raise TypeError(f"event kind {kind!r} registered twice")
        required = frozenset(n for n, f in fields.items()
                             if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
        _SPECS[cls] = EventSpec(kind, cls, dict(checks), required)
        _KINDS[kind] = cls
        _KIND_OF[cls] = kind
        return cls

    return register


# -- event types -------------------------------------------------------------------------------


class RequestEvent(NamedTuple):
    """One HTTP request (or TLS ClientHello, with an empty path) seen on the wire.

    A NamedTuple, not a dataclass: the sniffer makes one per request at line rate, and a tuple
    is the cheapest immutable record Python has."""

    ts: float  # capture time, seconds since the epoch: windows run on this
    client: str  # pseudonymous client id (keyed hash), never the raw address by default
    method: str
    host: str
    path: str  # path + query as sent
    url: str
    cache_key: str
    range: str = ""
    ua_class: str = ""


# Caps of a RequestEvent's string fields after ts, in field order (checked in one tight loop:
# batches are the hot path of streams).
REQUEST_FIELD_CAPS = (256, 32, MAX_HOST_LEN, MAX_URL_LEN, MAX_URL_LEN, MAX_KEY_LEN, 256, 64)


def request_event_error(event: RequestEvent) -> str | None:
    """Why a RequestEvent would be refused by decoding (None if fine): for producers (the sniffer
    drops such an event instead of poisoning its whole batch)."""
    try:
        _request_event(list(event))
    except (DecodeError, ValueError) as exc:
        return str(exc)
    return None


def _events(value: Any) -> tuple[RequestEvent, ...]:
    if type(value) is not list:
        raise DecodeError("must be an array of request events")
    if len(value) > MAX_BATCH_EVENTS:
        raise DecodeError(f"more than {MAX_BATCH_EVENTS} events")
    return tuple(_request_event(e) for e in value)


def _logged_ints(value: Any) -> tuple[int, ...]:
    """replay (issue 19): an optional per-event array of non-negative integers."""
    if type(value) is not list or len(value) > MAX_BATCH_EVENTS:
        raise DecodeError("must be an array parallel to events")
    if not all(type(v) is int and 0 <= v < 1 << 53 for v in value):
        raise DecodeError("must be non-negative integers")
    return tuple(value)


@event_type("batch", bucket=Int(0, 65535), events=_events, sizes=_logged_ints, statuses=_logged_ints)
@dataclass(frozen=True, slots=True)
class RequestBatch:
    """What one `requests` message holds: events of one partition bucket."""

    bucket: int
    events: tuple[RequestEvent, ...] = field(default_factory=tuple)
    # -- replay (issue 19): what an imported access log knows and the sniffer cannot see (it
    # watches requests only). Parallel to ``events`` when present, empty otherwise; encoded only
    # when present, so sniffer batches are unchanged on the wire.
    sizes: tuple[int, ...] = ()  # response bytes as logged (0 with status 0 = unknown)
    statuses: tuple[int, ...] = ()  # HTTP status as logged (0 = unknown)

    def __post_init__(self) -> None:
        for name, row in (("sizes", self.sizes), ("statuses", self.statuses)):
            if row and len(row) != len(self.events):
                raise ValueError(f"{name} must be parallel to events")


@event_type("hot", cache_key=KEY, url=Url(), host=HOST, heat=Int(), clients=Int(), window_s=Int(),
            ts=TS, reason=Str(128), admission=Str(MAX_KEY_LEN + 64))
@dataclass(frozen=True, slots=True)
class HotUrl:
    """A cache key that crossed the admission rule."""

    cache_key: str
    url: str
    host: str
    heat: int  # requests in the window
    clients: int  # distinct clients in the window
    window_s: int
    ts: float  # event time of the request that made it hot
    reason: str = "heat"
    # key@event time of the admission: a HotUrl sent again for the same admission (after a
    # crash) has the same id, so consumers drop it; a new admission (evicted, retry) a new one
    admission: str = ""


@event_type("cache", cache_key=KEY, state=Str(16, choices=CACHE_STATES), url=Url(empty=True),
            host=Str(MAX_HOST_LEN), path=Str(1024), size=Int(), sha256=Str(64), etag=Str(MAX_HEADER_LEN),
            last_modified=Str(MAX_HEADER_LEN), content_type=Str(MAX_HEADER_LEN), node=Str(253), ts=TS,
            error=Str(MAX_TEXT_LEN), source=Str(16), refused=Bool())
@dataclass(frozen=True, slots=True)
class CacheEvent:
    """The state of one cached object; `cache-events` is compacted on cache_key.

    ``refused`` (only with state ``failed``): the cache's quota refused the object (over the
    per-object cap, or no room with nothing to evict) rather than its download failing; ``size``
    is then the object's size when the fetcher knew it (0 otherwise). Replay lets each candidate
    quota decide such an object itself instead of counting a failed download (docs/tuning.md).
    """

    cache_key: str
    state: str
    url: str = ""
    host: str = ""
    path: str = ""  # file path relative to the cache root
    size: int = 0
    sha256: str = ""
    etag: str = ""
    last_modified: str = ""
    content_type: str = ""
    node: str = ""
    ts: float = 0.0
    error: str = ""
    source: str = ""  # "fetch" (prefetched by heat) or "fill" (stored in-path by the edge)
    refused: bool = False  # failed because the quota refused it, not the download (see above)

    def __post_init__(self) -> None:
        if self.state not in CACHE_STATES:
            raise DecodeError(f"unknown cache state {self.state!r}")
        if self.refused and self.state != "failed":
            raise DecodeError(f"refused with state {self.state!r}: only a failed fetch is refused")


# -- operator control (console issue): one compacted `control` topic, keyed by ControlEvent.key,
# so the latest switch per subject is what every follower rebuilds at start.
CONTROL_VALUES: dict[str, frozenset[str]] = {
    "url": frozenset({"always", "never", "none"}),  # pin a cache key; "none" = unpinned
    "host": frozenset({"always", "never", "none"}),  # pin every key of a host
    "prefetch": frozenset({"paused", "running"}),  # the fetcher takes no new hot URLs while paused
    "steering": frozenset({"stopped", "running"}),  # the kill switch: the DNS steers nothing while stopped
}
CONTROL_MAX_SUBJECT = 2048


@event_type("control", target=Str(16, choices=frozenset(CONTROL_VALUES)), value=Str(16),
            subject=Str(CONTROL_MAX_SUBJECT), by=Str(256), ts=TS, reason=Str(1024))
@dataclass(frozen=True, slots=True)
class ControlEvent:
    """One operator switch; `control` is compacted on :attr:`key` (latest per subject wins).

    ``target`` url/host carry the cache key / host in ``subject``; prefetch/steering are global
    (empty subject). ``by`` and ``ts`` say who switched it and when (shown by the console)."""

    target: str
    value: str
    subject: str = ""
    by: str = ""
    ts: float = 0.0
    reason: str = ""

    def __post_init__(self) -> None:
        for name in ("target", "value", "subject", "by", "reason"):
            if not isinstance(getattr(self, name), str):
                raise DecodeError(f"control {name} must be a string")
        if not isinstance(self.ts, (int, float)) or isinstance(self.ts, bool):
            raise DecodeError("control ts must be a number")
        allowed = CONTROL_VALUES.get(self.target)
        if allowed is None:
            raise DecodeError(f"unknown control target {self.target!r}")
        if self.value not in allowed:
            raise DecodeError(f"control {self.target} value must be one of {sorted(allowed)}, not {self.value!r}")
        if self.target in ("url", "host"):
            if not self.subject or len(self.subject) > CONTROL_MAX_SUBJECT:
                raise DecodeError(f"control {self.target} needs a subject of 1..{CONTROL_MAX_SUBJECT} characters")
        elif self.subject:
            raise DecodeError(f"control {self.target} takes no subject")
        if len(self.by) > 256 or len(self.reason) > 1024:
            raise DecodeError("control by/reason too long")

    @property
    def key(self) -> str:
        """The compaction key: one live switch per target and subject."""
        return f"{self.target}:{self.subject}"


PROGRESS_STATES: frozenset[str] = frozenset({"queued", "running", "done", "failed"})


@event_type("progress", cache_key=KEY, state=Str(16, choices=PROGRESS_STATES), url=Url(empty=True),
            host=Str(MAX_HOST_LEN), done_bytes=Int(), total_bytes=Int(), speed_bps=Float(), ts=TS,
            error=Str(MAX_TEXT_LEN), node=Str(253))
@dataclass(frozen=True, slots=True)
class FetchProgress:
    """Progress of one download on `fetch-progress` (keyed by cache_key), at least every second
    while it runs and once when it ends; the console's progress bars, speed and ETA."""

    cache_key: str
    state: str  # queued / running / done / failed
    url: str = ""
    host: str = ""
    done_bytes: int = 0
    total_bytes: int = 0  # 0 = not known yet
    speed_bps: float = 0.0  # bytes per second now
    ts: float = 0.0
    error: str = ""  # why it failed (or why it waits)
    node: str = ""

    def __post_init__(self) -> None:
        if self.state not in PROGRESS_STATES:
            raise DecodeError(f"unknown progress state {self.state!r}")
        for name in ("cache_key", "url", "host", "error", "node"):
            if not isinstance(getattr(self, name), str):
                raise DecodeError(f"progress {name} must be a string")
        for name in ("done_bytes", "total_bytes", "speed_bps", "ts"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise DecodeError(f"progress {name} must be a non-negative number")


@event_type("host-heat", host=HOST, partition=Int(0, 65535), requests=Int(), tls=Int(), clients=Int(),
            window_s=Int(), ts=TS, http_share=Float(0.0, 1.0), sketch=Str(1 << 19))
@dataclass(frozen=True, slots=True)
class HostHeat:
    """The heat of one host in one `requests` partition over the heat window, on `host-heat`
    (keyed by host). A host's requests spread over partitions: sum ``requests`` and ``tls``
    over the latest record of each partition; ``clients`` is distinct per partition, and the
    distinct clients of the host over all partitions come from merging the records' ``sketch``
    (heatcache.hostheat.merge)."""

    host: str
    partition: int
    requests: int  # HTTP and TLS requests in the window
    tls: int  # of which TLS ClientHellos (SNI): not cacheable here
    clients: int
    window_s: int
    ts: float  # the partition's watermark (event time) when computed
    http_share: float = 0.0  # share of the requests that are plain HTTP (cacheable at all)
    sketch: str = ""  # base64 HyperLogLog registers of the window's clients (merge: register-wise max)


Event = RequestBatch | HotUrl | CacheEvent | ControlEvent | FetchProgress | HostHeat
T = TypeVar("T")


def encode(event: Any) -> bytes:
    """Serialize an event as one JSON object with its kind and schema version."""
    body: dict[str, Any] = {"v": SCHEMA_VERSION, "kind": _KIND_OF[type(event)]}
    if isinstance(event, RequestBatch):
        body["bucket"] = event.bucket
        # Events as compact arrays: a batch is the hot path, field names would double its size.
        body["events"] = [list(e) for e in event.events]
        if event.sizes:
            body["sizes"] = list(event.sizes)
        if event.statuses:
            body["statuses"] = list(event.statuses)
    else:
        # orjson serializes the (flat, frozen) dataclass natively: splice the kind and version in
        # front of its fields (dataclasses.asdict deep-copies: ~10x slower, and streams sends a
        # HotUrl per admission and a HostHeat per host)
        head = orjson.dumps(body)
        return head[:-1] + b"," + orjson.dumps(event)[1:]
    return orjson.dumps(body)


def decode(raw: bytes | None, expect: type[T]) -> T:
    """Parse one message; raise DecodeError unless it is a valid event of type ``expect``."""
    if not raw:
        raise DecodeError("empty message")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"not JSON: {exc}") from None
    if type(body) is not dict:
        raise DecodeError("not a JSON object")
    if body.get("v") != SCHEMA_VERSION or type(body.get("v")) is not int:
        raise DecodeError(f"unsupported schema version {str(body.get('v'))[:20]!r}")
    spec = _SPECS.get(expect)
    if spec is None:
        raise TypeError(f"{expect!r} is not a registered event type")
    kind = body.pop("kind", None)
    body.pop("v")
    if kind != spec.kind:
        raise DecodeError(f"expected {spec.kind!r}, got kind {str(kind)[:40]!r}")
    unknown = body.keys() - spec.checks.keys()
    if unknown:
        raise DecodeError(f"bad {kind} event: unknown field(s) {sorted(unknown)[:5]}")
    missing = spec.required - body.keys()
    if missing:
        raise DecodeError(f"bad {kind} event: missing field(s) {sorted(missing)}")
    values = {}
    for name, value in body.items():
        try:
            values[name] = spec.checks[name](value)
        except (DecodeError, ValueError, TypeError) as exc:
            raise DecodeError(f"bad {kind} event: {name}: {exc}") from None
    try:
        return expect(**values)
    except (TypeError, ValueError) as exc:
        raise DecodeError(f"bad {kind} event: {exc}") from None


_REQ_LEN = len(RequestEvent._fields)


def _request_event(row: Any) -> RequestEvent:
    if type(row) is not list or len(row) != _REQ_LEN:
        raise DecodeError(f"request event must be an array of {_REQ_LEN} fields")
    ts = row[0]
    if (type(ts) is not float and type(ts) is not int) or not 0 <= ts <= MAX_TS:
        raise DecodeError("request ts must be a number of seconds since the epoch")
    for value, cap in zip(row[1:], REQUEST_FIELD_CAPS, strict=False):
        if type(value) is not str:
            raise DecodeError("request fields after ts must be strings")
        if len(value) > cap:
            raise DecodeError(f"request field longer than {cap} characters")
    return RequestEvent(float(ts), *row[1:])


# -- checks that need the consumer's running state (pure: the state is passed in) ---------------


def event_time_error(ts: float, watermark: float, max_ahead_s: float) -> str | None:
    """Why an event at ``ts`` is refused by a stream whose event time has reached ``watermark``
    (None if it is accepted). Event time, not the wall clock: imported logs keep their times,
    but one event far in the future must not move a window (or block its key) for good."""
    if watermark > 0 and ts > watermark + max_ahead_s:
        return f"event time {ts:.0f} is {ts - watermark:.0f}s ahead of the stream's watermark {watermark:.0f}"
    return None


def bucket_of(cache_key: str, partitions: int) -> int:
    """Partition bucket of a key: stable across processes and languages (CRC-32)."""
    return zlib.crc32(cache_key.encode("utf-8", "surrogatepass")) % partitions


_USERINFO = re.compile(r"://[^/@\s\"'?#]*@")


def dead_letter_value(topic: str, partition: int, offset: int, reason: str, raw: bytes | None) -> bytes:
    """The value written to `dead-letter`: where the message came from, why, and its bytes."""
    return orjson.dumps(
        {
            "v": SCHEMA_VERSION,
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "reason": reason,
            # the bytes as received, except credentials of any URL in them (never carried on)
            "value": _USERINFO.sub("://***@", (raw or b"").decode("utf-8", "backslashreplace")),
        }
    )
