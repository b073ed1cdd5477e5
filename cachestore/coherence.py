"""Coherence with the origin (pure, time passed in): may a response be stored, how long it stays
fresh, what a revalidation answer means.

Rules (RFC 9111 for a shared cache):
- never stored: ``no-store`` or ``private``; an answer to a request that carried ``Cookie`` or
  ``Authorization`` unless the response says it is shared (``public`` or ``s-maxage``); a
  response that sets a cookie; anything but a whole 200;
- freshness: ``s-maxage``, else ``max-age``, else ``Expires`` - ``Date``; ``no-cache`` (or
  ``must-revalidate`` with no lifetime) means stale at once; with none of these, the heuristic
  10 % of the time since ``Last-Modified`` (capped at a day), and :data:`DEFAULT_HEURISTIC_S`
  when there is no ``Last-Modified`` either;
- a stale object is revalidated in the background with ``If-None-Match`` / ``If-Modified-Since``:
  304 -> fresh again, 200 -> changed (refetched), 404/410 -> gone (purged), anything else -> keep
  serving it stale until ``stale_grace_s`` past its freshness, then evict.
"""

from __future__ import annotations

from collections.abc import Mapping
from email.utils import parsedate_to_datetime

HEURISTIC_FRACTION = 0.1
HEURISTIC_MAX_S = 86400.0
DEFAULT_HEURISTIC_S = 3600.0


def cache_control(value: str) -> dict[str, str]:
    """``max-age=60, private`` -> {"max-age": "60", "private": ""} (names lower-case)."""
    out: dict[str, str] = {}
    for part in value.split(","):
        name, _, arg = part.strip().partition("=")
        if name:
            out[name.strip().lower()] = arg.strip().strip('"')
    return out


def _seconds(value: str | None) -> float | None:
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())


def http_time(value: str) -> float | None:
    """An HTTP date as epoch seconds, None if absent or malformed."""
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def refuse_to_store(request_headers: Mapping[str, str], status: int, response_headers: Mapping[str, str]) -> str:
    """"" if a shared cache may store this answer, else the reason."""
    req = _lower(request_headers)
    resp = _lower(response_headers)
    if status != 200:
        return f"status {status}"
    cc = cache_control(resp.get("cache-control", ""))
    if "no-store" in cc:
        return "no-store"
    if "private" in cc:
        return "private"
    if "set-cookie" in resp:
        return "sets a cookie"
    if ("cookie" in req or "authorization" in req) and not ("public" in cc or "s-maxage" in cc):
        return "personalised request (Cookie/Authorization) without public or s-maxage"
    return ""


def fresh_until(response_headers: Mapping[str, str], now: float) -> float:
    """Absolute time until which a stored copy is fresh (== now when it must be revalidated at once)."""
    h = _lower(response_headers)
    cc = cache_control(h.get("cache-control", ""))
    if "no-cache" in cc:
        return now
    for directive in ("s-maxage", "max-age"):
        if directive in cc:
            secs = _seconds(cc[directive])
            return now + secs if secs is not None else now
    if "must-revalidate" in cc:
        return now
    date = http_time(h.get("date", "")) or now
    if "expires" in h:
        expires = http_time(h["expires"])
        return now + max(0.0, expires - date) if expires is not None else now  # invalid Expires = stale
    modified = http_time(h.get("last-modified", ""))
    if modified is not None:
        return now + min(HEURISTIC_MAX_S, max(0.0, HEURISTIC_FRACTION * (date - modified)))
    return now + DEFAULT_HEURISTIC_S


def is_stale(fresh_until_ts: float, now: float) -> bool:
    return fresh_until_ts <= now


def conditional_headers(etag: str, last_modified: str) -> dict[str, str]:
    """The validators a revalidation sends."""
    out: dict[str, str] = {}
    if etag:
        out["If-None-Match"] = etag
    if last_modified:
        out["If-Modified-Since"] = last_modified
    return out


def revalidation_outcome(status: int) -> str:
    """What a conditional request's answer means: fresh, changed, gone or error."""
    if status == 304:
        return "fresh"
    if status == 200:
        return "changed"
    if status in (404, 410):
        return "gone"
    return "error"


def due_for_revalidation(fresh_until_ts: float, checked_at: float, now: float, min_interval_s: float) -> bool:
    """A stored copy is asked about again once its freshness ended (0 = unknown: at once), and
    at most once per ``min_interval_s`` (an origin that keeps answering ``max-age=0`` is not
    asked in a loop)."""
    return is_stale(fresh_until_ts, now) and now - checked_at >= min_interval_s


def after_not_modified(stored: Mapping[str, str], answer: Mapping[str, str], now: float) -> dict[str, str]:
    """The stored validators and Cache-Control updated with those a 304 carries (RFC 9111
    4.3.4), plus ``fresh-until`` (the new freshness, as a string) for the catalog."""
    merged = {k: v for k, v in _lower(stored).items() if v}
    for name in ("etag", "last-modified", "cache-control", "expires", "date"):
        if name in (got := _lower(answer)) and got[name]:
            merged[name] = got[name]
    if "expires" in merged and "date" not in _lower(answer):
        merged.pop("expires")  # an Expires of the first answer means nothing against the 304's time
    merged["fresh-until"] = repr(fresh_until(merged, now))
    return merged


def after_error(fresh_until_ts: float, now: float, stale_grace_s: float) -> str:
    """An origin that cannot answer the revalidation (5xx, a redirect, unreachable): "keep"
    serving the stale copy within ``stale_grace_s`` past its freshness, then "evict"."""
    return "evict" if now - fresh_until_ts > stale_grace_s else "keep"
