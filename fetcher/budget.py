"""The off-peak window for large prefetches (pure; time passed in): an object of at least
``HEATCACHE_FETCH_LARGE_OBJECT_BYTES`` is downloaded only while the UTC clock is inside
``HEATCACHE_FETCH_OFFPEAK_HOURS`` ("22-6": from 22:00 to 06:00 UTC), so prefetching big videos
never competes with the campus's daytime traffic; smaller objects go at once, all of them under
aria2c's ``--max-overall-download-limit`` (``HEATCACHE_FETCH_MAX_OVERALL_BPS``)."""

from __future__ import annotations

HOUR = 3600.0
DAY = 86400.0


def parse_window(text: str) -> tuple[int, int] | None:
    """"22-6" -> (22, 6); "" -> None (no window: any time). ValueError if malformed."""
    if not text.strip():
        return None
    start, sep, end = text.strip().partition("-")
    if not sep or not start.isdigit() or not end.isdigit() or not (0 <= int(start) < 24 and 0 <= int(end) <= 24):
        raise ValueError(f"off-peak hours must look like 22-6 (UTC hours), not {text!r}")
    if int(start) == int(end) % 24:
        raise ValueError(f"off-peak window {text!r} is empty")
    return int(start), int(end) % 24


def wait_s(now: float, window: tuple[int, int] | None) -> float:
    """Seconds until the window opens (0 inside it or without one)."""
    if window is None:
        return 0.0
    start, end = window
    hour_of_day = (now % DAY) / HOUR
    inside = start <= hour_of_day < end if start < end else (hour_of_day >= start or hour_of_day < end)
    if inside:
        return 0.0
    return ((start - hour_of_day) % 24) * HOUR


def must_wait(length: int | None, now: float, large_bytes: int, window: tuple[int, int] | None) -> float:
    """How long a download of ``length`` bytes waits (0 = start now); unknown lengths never wait."""
    if not large_bytes or length is None or length < large_bytes:
        return 0.0
    return wait_s(now, window)
