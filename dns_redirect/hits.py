"""Pure HTTP semantics of a cache hit: which status, which bytes, which headers (RFC 9110
ranges and conditional requests), decided from the request headers and the object's metadata."""

from __future__ import annotations

from collections.abc import Mapping
from email.utils import formatdate
from typing import NamedTuple
from urllib.parse import quote

from cachestore.coherence import http_time


class HitPlan(NamedTuple):
    status: int  # 200, 206, 304, 412 or 416
    start: int
    length: int  # bytes of body to send (0 for HEAD is decided by the caller)
    headers: dict[str, str]


def etag_for(sha256: str, size: int) -> str:
    """A strong validator from the content digest (kept for callers that need a digest tag; the
    edge itself answers with the origin's validators, see :func:`plan_hit`)."""
    return f'"{sha256[:32]}"' if sha256 else f'"size-{size}"'


def _tags(header: str) -> list[str]:
    return [t.strip() for t in header.split(",") if t.strip()]


def _weak_match(header: str, etag: str) -> bool:
    """If-None-Match: weak comparison (W/"x" matches "x"), ``*`` matches any stored object."""
    if header.strip() == "*":
        return True
    if not etag:
        return False
    opaque = etag.removeprefix("W/")
    return any(t.removeprefix("W/") == opaque for t in _tags(header))


def _strong_match(header: str, etag: str) -> bool:
    """If-Match: strong comparison (a weak tag on either side never matches), ``*`` matches."""
    if header.strip() == "*":
        return True
    if not etag or etag.startswith("W/"):
        return False
    return any(t == etag for t in _tags(header))


def if_range_holds(if_range: str, etag: str, last_modified: str) -> bool:
    """RFC 9110 13.1.5: an entity-tag must match strongly; an HTTP-date must equal Last-Modified
    exactly (as a date); a weak or malformed validator never holds (the whole object is sent)."""
    value = if_range.strip()
    if value.startswith(('"', "W/")):
        return bool(etag) and not value.startswith("W/") and not etag.startswith("W/") and value == etag
    given, modified = http_time(value), http_time(last_modified)
    return given is not None and modified is not None and given == modified


def _parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """(start, end) of a single byte range; None to ignore the header; "unsatisfiable"."""
    if not header.startswith("bytes=") or "," in header:
        return None  # other units or multiple ranges: answer the whole object, as RFC 9110 allows
    first, sep, last = header[6:].strip().partition("-")
    if not sep:
        return None
    try:
        if first == "":
            n = int(last)
            if n <= 0:
                return "unsatisfiable"
            return max(0, size - n), size - 1
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start < 0 or (last and end < start):
        return None
    if start >= size:
        return "unsatisfiable"
    return start, min(end, size - 1)


def preconditions(etag: str, last_modified: str, if_none_match: str = "", if_modified_since: str = "",
                  if_match: str = "", if_unmodified_since: str = "") -> int:
    """RFC 9110 13.2.2's order against the origin's validators: 412 (If-Match, else
    If-Unmodified-Since), 304 (If-None-Match, else If-Modified-Since), or 0 (go on). Needs no
    length: the edge also answers it for an object still being filled."""
    if if_match:
        if not _strong_match(if_match, etag):
            return 412
    elif if_unmodified_since:
        given, modified = http_time(if_unmodified_since), http_time(last_modified)
        if given is not None and modified is not None and modified > given:  # invalid dates: ignored
            return 412
    if if_none_match:
        if _weak_match(if_none_match, etag):
            return 304
    elif if_modified_since:
        given, modified = http_time(if_modified_since), http_time(last_modified)
        if given is not None and modified is not None and modified <= given:
            return 304
    return 0


def plan_growing(range_header: str) -> tuple[str, int, int]:
    """How a follower of a fill whose total length is not known yet (a chunked origin answer) is
    served: ``("whole", 0, 0)`` the whole object as it grows (no Range, one the planner ignores,
    or ``bytes=0-``: a 200 is a valid answer to any range); ``("range", first, last)`` a closed
    range, answered once its last byte is in or the fill ends; ``("pass", 0, 0)`` an open range
    past 0 or a suffix range, whose answer needs the total (Content-Range must name its last byte)."""
    if not range_header or _parse_range(range_header, 1 << 62) is None:
        return "whole", 0, 0
    first, _, last = range_header[6:].strip().partition("-")
    if not first or not last:
        return ("whole", 0, 0) if first and int(first) == 0 else ("pass", 0, 0)
    return "range", int(first), int(last)


def plan_hit(size: int, etag: str, last_modified: str, content_type: str, if_none_match: str = "",
             if_modified_since: str = "", range_header: str = "", if_range: str = "", if_match: str = "",
             if_unmodified_since: str = "") -> HitPlan:
    """The answer to a GET/HEAD of a stored object, with the origin's validators (``etag`` and
    ``last_modified`` as the origin sent them; no ETag header when the origin gave none), the
    preconditions evaluated in RFC 9110 13.2.2's order: If-Match (412), else
    If-Unmodified-Since (412); If-None-Match (304), else If-Modified-Since (304); then Range
    under If-Range (206, 416, or the whole object when If-Range does not hold)."""
    headers = {"Content-Type": content_type or "application/octet-stream"}
    if etag:
        headers["ETag"] = etag
    headers["Accept-Ranges"] = "bytes"
    headers["X-Cache"] = "HIT"
    if last_modified:
        headers["Last-Modified"] = last_modified
    verdict = preconditions(etag, last_modified, if_none_match, if_modified_since, if_match, if_unmodified_since)
    if verdict:
        return HitPlan(verdict, 0, 0, headers)
    if range_header and (not if_range or if_range_holds(if_range, etag, last_modified)):
        parsed = _parse_range(range_header, size)
        if parsed == "unsatisfiable":
            headers["Content-Range"] = f"bytes */{size}"
            return HitPlan(416, 0, 0, headers)
        if isinstance(parsed, tuple):
            start, end = parsed
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            return HitPlan(206, start, end - start + 1, headers)
    return HitPlan(200, 0, size, headers)


def http_date(ts: float) -> str:
    return formatdate(ts, usegmt=True)


def may_fill(method: str, request_headers: Mapping[str, str], status: int, response_headers: Mapping[str, str],
             max_bytes: int) -> str:
    """Whether a miss passing through may be stored as it passes (in-path fill): "" if yes,
    else the reason not to. Only whole, shared, unencoded 200 answers to plain GETs are kept."""
    if method != "GET":
        return "method"
    if status != 200:
        return "status"
    if "Range" in request_headers or "Authorization" in request_headers:
        return "request"
    if "Set-Cookie" in response_headers:
        return "cookie"
    cc = response_headers.get("Cache-Control", "").lower()
    if any(d in cc for d in ("no-store", "private", "no-cache")):
        return "cache-control"
    if response_headers.get("Content-Encoding", "identity").lower() != "identity":
        return "encoded"
    vary = [v.strip().lower() for v in response_headers.get("Vary", "").split(",") if v.strip()]
    if any(v != "accept-encoding" for v in vary):
        return "vary"
    length = response_headers.get("Content-Length")
    if length is not None and (not length.isdigit() or int(length) > max_bytes):
        return "size"
    return ""


class SimpleHead(NamedTuple):
    """A plain GET/HEAD request head without a body: the only kind the hit front answers itself."""

    method: str
    target: str
    http10: bool
    headers: dict[str, str]  # lower-case names
    keep_alive: bool


MAX_HEAD = 16384
MAX_HEADERS = 100
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
# a request with any of these needs the full HTTP server (bodies, upgrades, 100-continue)
_NOT_SIMPLE = frozenset({"content-length", "transfer-encoding", "expect", "upgrade", "http2-settings"})


def parse_simple_head(head: bytes) -> SimpleHead | None:
    """Parse a request head (without its final CRLFCRLF) if, and only if, it is plainly a body-less
    GET or HEAD in HTTP/1.x; None for anything else, including anything malformed or unusual,
    which the caller hands to the full HTTP server (whose strict parser answers errors).

    Conservative on purpose: a false None costs speed, a false parse could mean smuggling."""
    if len(head) > MAX_HEAD or not head.isascii():
        return None
    lines = head.decode("ascii").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        return None
    method, target, version = parts
    if method not in ("GET", "HEAD") or version not in ("HTTP/1.1", "HTTP/1.0") or not target.startswith("/"):
        return None
    if not target.isprintable() or len(lines) > MAX_HEADERS + 1:
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or not _TOKEN.issuperset(name):  # also rejects obs-fold and "\n" alone
            return None
        name = name.lower()
        if name in headers or name in _NOT_SIMPLE or not value.isprintable():
            return None  # duplicates (two Hosts...) are for the strict parser to judge
        headers[name] = value.strip(" \t")
    http10 = version == "HTTP/1.0"
    if not http10 and "host" not in headers:
        return None
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    keep_alive = "keep-alive" in tokens if http10 else "close" not in tokens
    return SimpleHead(method, target, http10, headers, keep_alive)


_REASONS = {200: "OK", 206: "Partial Content", 304: "Not Modified", 412: "Precondition Failed",
            416: "Range Not Satisfiable"}


def head_start(plan: HitPlan) -> bytes:
    """The status line and the object's headers of a planned hit (the part that does not change
    from one request to the next)."""
    lines = [f"HTTP/1.1 {plan.status} {_REASONS.get(plan.status, 'OK')}"]
    lines.extend(f"{k}: {v}" for k, v in plan.headers.items())
    if plan.status != 304:  # a 304 carries neither a body nor a length
        lines.append(f"Content-Length: {plan.length if plan.status in (200, 206) else 0}")
    return ("\r\n".join(lines) + "\r\n").encode("latin-1", "replace")


def accel_head(prefix: str, relpath: str, content_type: str) -> bytes:
    """A hit handed to nginx in front: it sends the file from its internal location (and decides
    ranges and validators itself); only the headers nginx keeps from us are worth sending."""
    return (f"HTTP/1.1 200 OK\r\nX-Accel-Redirect: {prefix}{quote(relpath)}\r\n"
            f"Content-Type: {content_type or 'application/octet-stream'}\r\nContent-Length: 0\r\n"
            ).encode("latin-1", "replace")


def head_end(date: str, keep_alive: bool, http10: bool) -> bytes:
    """The per-request tail of a response head: Date, Server, the connection's fate, blank line."""
    conn = "" if keep_alive and not http10 else "Connection: keep-alive\r\n" if keep_alive else "Connection: close\r\n"
    return f"Date: {date}\r\nServer: heatcache\r\n{conn}\r\n".encode("latin-1")


def response_head(plan: HitPlan, date: str, keep_alive: bool, http10: bool) -> bytes:
    """The status line and headers of a planned hit, as bytes ready for the socket."""
    return head_start(plan) + head_end(date, keep_alive, http10)
