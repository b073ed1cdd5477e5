"""Pure parsers of access-log lines: one line in, one :class:`LogLine` out, or :class:`BadLine`
with the reason (counted by the importer, never fatal).

Formats (docs/tuning.md shows an example of each):

- ``clf``: Common or Combined Log Format (nginx/Apache ``combined``). The request target is
  either absolute (proxy logs) or origin-form, then the host comes from ``--host``.
- ``squid``: Squid's native ``access.log`` (``time elapsed client code/status bytes method URL ...``).
- ``jsonl``: one JSON object per line with RequestEvent's field names plus what a log knows::

      {"ts": 1764600000.25, "client": "10.0.0.7", "method": "GET",
       "url": "http://host/path?q", "size": 1048576, "status": 200, "range": "", "ua": "curl/8"}

  ``ts`` (epoch seconds or ISO 8601) and ``client`` are required, and ``url`` or ``host`` +
  ``path``; ``method`` defaults to GET; ``cache_key`` is recomputed (the key rules decide it);
  ``ua_class`` is taken when ``ua`` is absent.
- ``csv``: ``ts,client,url[,size]``, an optional header line starting with ``ts``.

``client`` is an address (or any id): the importer turns it into a keyed pseudonym exactly as
the sniffer does.
"""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta, timezone
from typing import NamedTuple

import orjson

from heatcache.contract import MAX_TS

FORMATS = ("clf", "squid", "jsonl", "csv", "pcap")


class BadLine(ValueError):
    """A line that is not a request of its format; ``reason`` is a short counter name."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LogLine(NamedTuple):
    ts: float
    client: str
    method: str
    target: str  # absolute URL or origin-form path+query
    host: str = ""  # Host when the target is origin-form
    size: int = 0  # response bytes (0 with status 0: unknown)
    status: int = 0  # 0: unknown
    user_agent: str = ""
    range: str = ""
    ua_class: str = ""  # a class already computed (jsonl of RequestEvents)


_MONTHS = {m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct",
                                       "Nov", "Dec"), 1)}


def _clf_time(text: str) -> float:
    """``10/Oct/2000:13:55:36 -0700`` -> epoch seconds (by hand: strptime is slow and locale-bound)."""
    try:
        day, mon, rest = text.split("/", 2)
        year, hh, mm, ss_zone = rest.split(":", 3)
        ss, _, zone = ss_zone.partition(" ")
        sign = -1 if zone.startswith("-") else 1
        offset = sign * (int(zone[1:3]) * 3600 + int(zone[3:5]) * 60) if zone else 0
        when = datetime(int(year), _MONTHS[mon], int(day), int(hh), int(mm), tzinfo=timezone(timedelta(seconds=offset)))
        return when.timestamp() + float(ss)
    except (ValueError, KeyError, IndexError):
        raise BadLine("bad-time") from None


def _quoted(line: str, start: int) -> tuple[str, int]:
    """The text of a double-quoted field starting at ``line[start]`` (backslash escapes kept)."""
    if start >= len(line) or line[start] != '"':
        raise BadLine("syntax")
    i = start + 1
    out = []
    while i < len(line):
        c = line[i]
        if c == "\\" and i + 1 < len(line):
            out.append(line[i + 1])
            i += 2
            continue
        if c == '"':
            return "".join(out), i + 1
        out.append(c)
        i += 1
    raise BadLine("syntax")


def parse_clf(line: str, default_host: str = "") -> LogLine:
    """``client ident user [time] "METHOD target PROTO" status bytes ["referer" "user agent"]``."""
    line = line.rstrip("\r\n")
    lb = line.find(" [")
    rb = line.find("] ", lb)
    if lb <= 0 or rb < 0:
        raise BadLine("syntax")
    client = line[:lb].split(" ", 1)[0]
    ts = _clf_time(line[lb + 2 : rb])
    request, pos = _quoted(line, rb + 2)
    rest = line[pos:].split(" ", 3)
    if len(rest) < 3 or rest[0] != "":
        raise BadLine("syntax")
    status_s, size_s = rest[1], rest[2]
    if not status_s.isdigit() or not (size_s.isdigit() or size_s == "-"):
        raise BadLine("syntax")
    ua = ""
    tail = rest[3] if len(rest) > 3 else ""
    if tail.startswith('"'):
        _referer, p2 = _quoted(tail, 0)
        if tail[p2 : p2 + 2] == ' "':
            ua, _ = _quoted(tail, p2 + 1)
    parts = request.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise BadLine("bad-request-line")
    method, target = parts[0], parts[1]
    if not target.startswith(("http://", "https://")) and not default_host:
        raise BadLine("no-host")
    return LogLine(ts, client, method, target, default_host, 0 if size_s == "-" else int(size_s), int(status_s), ua)


def parse_squid(line: str) -> LogLine:
    """``time elapsed client code/status bytes method URL user hierarchy/peer type``."""
    parts = line.split()
    if len(parts) < 7:
        raise BadLine("syntax")
    try:
        ts = float(parts[0])
    except ValueError:
        raise BadLine("bad-time") from None
    _code, _, status_s = parts[3].partition("/")
    if not status_s.isdigit() or not parts[4].isdigit():
        raise BadLine("syntax")
    method, url = parts[5], parts[6]
    if method == "CONNECT":  # a tunnel: host-level, like the sniffer's TLS events
        return LogLine(ts, parts[2], "TLS", f"https://{url}/", "", int(parts[4]), int(status_s))
    if not url.startswith(("http://", "https://")):
        raise BadLine("bad-url")
    return LogLine(ts, parts[2], method, url, "", int(parts[4]), int(status_s))


def parse_ts(value: object) -> float:
    """Epoch seconds (number or numeric string) or an ISO 8601 time (UTC when it has no zone),
    within what an event may carry (0 .. contract.MAX_TS; NaN and infinities refused)."""
    ts = _ts(value)
    if not 0.0 <= ts <= MAX_TS:  # also false for NaN
        raise BadLine("bad-time")
    return ts


def _ts(value: object) -> float:
    if isinstance(value, bool):
        raise BadLine("bad-time")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
        try:
            when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise BadLine("bad-time") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return when.timestamp()
    raise BadLine("bad-time")


MAX_LOGGED = 1 << 53  # RequestBatch.sizes / .statuses values are below this (the contract's check)


def _int_field(obj: dict[str, object], name: str) -> int:
    value = obj.get(name, 0)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_LOGGED:
        raise BadLine(f"bad-{name}")
    return value


def _str_field(obj: dict[str, object], name: str) -> str:
    value = obj.get(name, "")
    if not isinstance(value, str):
        raise BadLine(f"bad-{name}")
    return value


def parse_jsonl(line: str) -> LogLine:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise BadLine("not-json") from None
    if not isinstance(obj, dict):
        raise BadLine("not-object")
    if "ts" not in obj:
        raise BadLine("no-ts")
    ts = parse_ts(obj["ts"])
    client = _str_field(obj, "client")
    if not client:
        raise BadLine("no-client")
    url, host, path = _str_field(obj, "url"), _str_field(obj, "host"), _str_field(obj, "path")
    method = _str_field(obj, "method") or "GET"
    if url:
        target = url
    elif host and path:
        target = path
    else:
        raise BadLine("no-url")
    return LogLine(ts, client, method, target, host, _int_field(obj, "size"), _int_field(obj, "status"),
                   _str_field(obj, "ua"), _str_field(obj, "range"), _str_field(obj, "ua_class"))


def parse_csv(line: str) -> LogLine:
    row = next(csv.reader([line]), [])
    if len(row) not in (3, 4):
        raise BadLine("columns")
    ts = parse_ts(row[0].strip())
    client, url = row[1].strip(), row[2].strip()
    if not client:
        raise BadLine("no-client")
    size = 0
    if len(row) == 4 and row[3].strip():
        if not row[3].strip().isdigit() or int(row[3]) >= MAX_LOGGED:
            raise BadLine("bad-size")
        size = int(row[3])
    # a CSV with sizes knows the object was served whole; without, nothing is known
    return LogLine(ts, client, "GET", url, "", size, 200 if size else 0)


def is_header(fmt: str, line: str) -> bool:
    """The CSV header line, comments and blank lines: skipped, not bad."""
    text = line.strip()
    return not text or text.startswith("#") or (fmt == "csv" and text.lower().startswith("ts,"))


def parse_line(fmt: str, line: str, default_host: str = "") -> LogLine:
    if fmt == "clf":
        return parse_clf(line, default_host)
    if fmt == "squid":
        return parse_squid(line)
    if fmt == "jsonl":
        return parse_jsonl(line)
    if fmt == "csv":
        return parse_csv(line)
    raise ValueError(f"unknown text format {fmt!r}")


def guess_format(name: str, first_line: str) -> str:
    """The format from the file name, else from the first line's shape."""
    lower = name.lower()
    for suffix, fmt in ((".pcap", "pcap"), (".pcapng", "pcap"), (".jsonl", "jsonl"), (".json", "jsonl"),
                        (".csv", "csv")):
        if lower.endswith(suffix):
            return fmt
    text = first_line.lstrip()
    if text.startswith("{"):
        return "jsonl"
    if text.lower().startswith("ts,") or (text.count(",") >= 2 and " " not in text):
        return "csv"
    if " [" in text and '"' in text:
        return "clf"
    return "squid"
