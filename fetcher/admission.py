"""What the fetcher does with a hot URL, given what it did with the key before (pure; time passed in).

The record (``cachestore.catalog.Admission``, one row per key in the catalog) survives restarts
of the fetcher, so:
- a re-sent admission (the same ``HotUrl.admission``: streams restarted before committing its
  output) that was already answered (cached or failed) is dropped, never downloaded again, even
  after the object was evicted since;
- the same admission while its record says ``fetching`` is taken on: that is the fetcher's own
  uncommitted message coming back after a restart, and its download resumes;
- a key whose fetch failed is not fetched again before its back-off has passed, whatever
  admission asks for it (base * 2^(failures-1), at most ``max_s``; a permanent failure such as
  an address-policy refusal or an object over the cap waits ``max_s`` at once). The fetcher
  answers such a hot URL with CacheEvent(failed) so streams' own back-off grows too.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from cachestore.catalog import Admission


@dataclass(frozen=True, slots=True)
class FailureBackoff:
    base_s: float = 60.0
    max_s: float = 6 * 3600.0

    def delay(self, failures: int, permanent: bool = False) -> float:
        if permanent:
            return self.max_s
        return float(min(self.max_s, self.base_s * 2 ** max(0, failures - 1)))


def verdict(record: Admission | None, admission: str, now: float) -> str:
    """"" to take the hot URL on, else why not: ``duplicate-admission`` or ``failed-backoff``."""
    if record is None:
        return ""
    if admission and record.admission == admission and record.state in ("cached", "failed"):
        return "duplicate-admission"
    if record.state == "failed" and now < record.retry_after:
        return "failed-backoff"
    return ""


def taken_on(record: Admission | None, cache_key: str, admission: str, now: float) -> Admission:
    """The record while the key is being fetched (earlier failures still count)."""
    failures = record.failures if record is not None else 0
    return Admission(cache_key, admission, "fetching", failures, 0.0, record.reason if record else "", now)


def succeeded(record: Admission, now: float) -> Admission:
    return replace(record, state="cached", failures=0, retry_after=0.0, reason="", updated_at=now)


def failed(record: Admission, now: float, reason: str, backoff: FailureBackoff, permanent: bool = False) -> Admission:
    failures = record.failures + 1
    return replace(record, state="failed", failures=failures, retry_after=now + backoff.delay(failures, permanent),
                   reason=reason[:500], updated_at=now)
