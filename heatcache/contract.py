"""The contract between stages: event types, their JSON encoding, and the logical topic names.

Every event is a frozen dataclass encoded with orjson as one JSON object carrying ``v`` (the
schema version). Decoding is strict: anything that is not a well-formed event of a known version
raises :class:`DecodeError`, which consumers turn into a ``dead-letter`` record.
"""

from __future__ import annotations

import dataclasses
import zlib
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


class DecodeError(ValueError):
    """A message that is not a valid event of this contract."""


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


@dataclass(frozen=True, slots=True)
class RequestBatch:
    """What one `requests` message holds: events of one partition bucket."""

    bucket: int
    events: tuple[RequestEvent, ...] = field(default_factory=tuple)


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


@dataclass(frozen=True, slots=True)
class CacheEvent:
    """The state of one cached object; `cache-events` is compacted on cache_key."""

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

    def __post_init__(self) -> None:
        if self.state not in CACHE_STATES:
            raise DecodeError(f"unknown cache state {self.state!r}")


# -- operator control (console issue): one compacted `control` topic, keyed by ControlEvent.key,
# so the latest switch per subject is what every follower rebuilds at start.
CONTROL_VALUES: dict[str, frozenset[str]] = {
    "url": frozenset({"always", "never", "none"}),  # pin a cache key; "none" = unpinned
    "host": frozenset({"always", "never", "none"}),  # pin every key of a host
    "prefetch": frozenset({"paused", "running"}),  # the fetcher takes no new hot URLs while paused
    "steering": frozenset({"stopped", "running"}),  # the kill switch: the DNS steers nothing while stopped
}
CONTROL_MAX_SUBJECT = 2048


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


@dataclass(frozen=True, slots=True)
class HostHeat:
    """The heat of one host in one `requests` partition over the heat window, on `host-heat`
    (keyed by host). A host's requests spread over partitions: sum ``requests`` / ``tls`` /
    ``http`` over the latest record of each partition; ``clients`` is distinct per partition."""

    host: str
    partition: int
    requests: int  # HTTP and TLS requests in the window
    tls: int  # of which TLS ClientHellos (SNI): not cacheable here
    clients: int
    window_s: int
    ts: float  # the partition's watermark (event time) when computed
    http_share: float = 0.0  # share of the requests that are plain HTTP (cacheable at all)

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise DecodeError("host-heat needs a host")
        for name in ("partition", "requests", "tls", "clients", "window_s"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise DecodeError(f"host-heat {name} must be a non-negative integer")
        for name in ("ts", "http_share"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise DecodeError(f"host-heat {name} must be a non-negative number")


Event = RequestBatch | HotUrl | CacheEvent | ControlEvent | FetchProgress | HostHeat
_KINDS: dict[str, type[Any]] = {"batch": RequestBatch, "hot": HotUrl, "cache": CacheEvent, "control": ControlEvent,
                                "progress": FetchProgress, "host-heat": HostHeat}
_KIND_OF = {cls: kind for kind, cls in _KINDS.items()}
T = TypeVar("T", RequestBatch, HotUrl, CacheEvent, ControlEvent, FetchProgress, HostHeat)


def encode(event: Event) -> bytes:
    """Serialize an event as one JSON object with its kind and schema version."""
    body: dict[str, Any] = {"v": SCHEMA_VERSION, "kind": _KIND_OF[type(event)]}
    if isinstance(event, RequestBatch):
        body["bucket"] = event.bucket
        # Events as compact arrays: a batch is the hot path, field names would double its size.
        body["events"] = [list(e) for e in event.events]
    else:
        body.update(dataclasses.asdict(event))
    return orjson.dumps(body)


def decode(raw: bytes | None, expect: type[T]) -> T:
    """Parse one message; raise DecodeError unless it is a valid event of type ``expect``."""
    if not raw:
        raise DecodeError("empty message")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise DecodeError("not a JSON object")
    if body.get("v") != SCHEMA_VERSION:
        raise DecodeError(f"unsupported schema version {body.get('v')!r}")
    kind = body.pop("kind", None)
    body.pop("v")
    if _KINDS.get(kind) is not expect:  # type: ignore[arg-type]
        raise DecodeError(f"expected {_KIND_OF[expect]!r}, got kind {kind!r}")
    try:
        if expect is RequestBatch:
            events = tuple(_request_event(e) for e in body["events"])
            return RequestBatch(bucket=int(body["bucket"]), events=events)  # type: ignore[return-value]
        return expect(**body)
    except (KeyError, TypeError, ValueError) as exc:
        raise DecodeError(f"bad {kind} event: {exc}") from None


_REQ_FIELDS = RequestEvent._fields


def _request_event(row: Any) -> RequestEvent:
    if not isinstance(row, list) or len(row) != len(_REQ_FIELDS):
        raise ValueError(f"request event must be an array of {len(_REQ_FIELDS)} fields")
    ts = row[0]
    if not isinstance(ts, (int, float)) or isinstance(ts, bool):
        raise ValueError("ts must be a number")
    if not all(isinstance(v, str) for v in row[1:]):
        raise ValueError("request fields after ts must be strings")
    return RequestEvent(float(ts), *row[1:])


def bucket_of(cache_key: str, partitions: int) -> int:
    """Partition bucket of a key: stable across processes and languages (CRC-32)."""
    return zlib.crc32(cache_key.encode("utf-8", "surrogatepass")) % partitions


def dead_letter_value(topic: str, partition: int, offset: int, reason: str, raw: bytes | None) -> bytes:
    """The value written to `dead-letter`: where the message came from, why, and its bytes."""
    return orjson.dumps(
        {
            "v": SCHEMA_VERSION,
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "reason": reason,
            "value": (raw or b"").decode("utf-8", "backslashreplace"),
        }
    )
