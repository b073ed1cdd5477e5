"""The off-peak window for large prefetches (fetcher/budget.py, pure)."""

from __future__ import annotations

import pytest

from fetcher.budget import must_wait, parse_window, wait_s
from heatcache.settings import SettingsError, load_settings

DAY0 = 1_796_169_600.0  # 2026-12-02 00:00 UTC


def test_windows_across_midnight_and_within_a_day() -> None:
    night = parse_window("22-6")
    assert night == (22, 6) and parse_window("") is None and parse_window("1-24") == (1, 0)
    assert wait_s(DAY0 + 23 * 3600, night) == 0 and wait_s(DAY0 + 5.5 * 3600, night) == 0
    assert wait_s(DAY0 + 6 * 3600, night) == 16 * 3600  # 06:00 -> 22:00
    assert wait_s(DAY0 + 21.5 * 3600, night) == 1800
    lunch = parse_window("12-14")
    assert wait_s(DAY0 + 13 * 3600, lunch) == 0 and wait_s(DAY0 + 14 * 3600, lunch) == 22 * 3600
    assert wait_s(DAY0, None) == 0
    for bad in ("22", "25-3", "a-b", "5-5"):
        with pytest.raises(ValueError):
            parse_window(bad)
    with pytest.raises(SettingsError):
        load_settings(fetch_offpeak_hours="25-3")


def test_only_large_objects_of_known_length_wait() -> None:
    night = (22, 6)
    noon = DAY0 + 12 * 3600
    assert must_wait(10**9, noon, 100 * 2**20, night) == 10 * 3600
    assert must_wait(10**6, noon, 100 * 2**20, night) == 0  # small: at once
    assert must_wait(None, noon, 100 * 2**20, night) == 0  # unknown length: at once (the cap still holds)
    assert must_wait(10**9, noon, 0, night) == 0  # no threshold: no window
    assert must_wait(10**9, DAY0 + 23 * 3600, 100 * 2**20, night) == 0
