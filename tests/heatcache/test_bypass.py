"""The bypass ratio's pure core: windows, ratios, the alertable figures, the record's fields."""

from __future__ import annotations

import pytest

from heatcache.bypass import BypassMeter, bypass_ratio, high_bypass, max_ratio, record_fields


def test_ratio_is_bypassed_over_bypassed_plus_served() -> None:
    assert bypass_ratio(0, 0) is None
    assert bypass_ratio(1, 3) == 0.25
    assert bypass_ratio(5, 0) == 1.0
    assert bypass_ratio(0, 7) == 0.0


def test_meter_counts_per_host_and_network_within_the_window() -> None:
    m = BypassMeter(window_s=60, bucket_s=10)
    for ts in (1000.0, 1001.0, 1012.0):
        m.bypassed("a.test", "dorms", ts)
    m.bypassed("a.test", "library", 1013.0)
    m.served("a.test", 1015.0, n=12)
    m.served("b.test", 1015.0)
    f = m.figures(1020.0)
    assert f["a.test"].bypassed == 4 and f["a.test"].served == 12 and f["a.test"].ratio == 0.25
    assert f["a.test"].networks == {"dorms": 3, "library": 1}
    assert f["b.test"].ratio == 0.0 and f["b.test"].networks == {}
    # 70 s later the first bucket (1000-1010) has left the window, the second not yet
    f = m.figures(1075.0)
    assert f["a.test"].bypassed == 2 and f["a.test"].served == 12
    assert m.figures(2000.0) == {}


def test_events_older_than_the_window_or_ahead_of_now_are_not_counted() -> None:
    m = BypassMeter(window_s=60, bucket_s=10)
    m.served("a.test", 5000.0)
    m.bypassed("a.test", "x", 4000.0)  # a late batch from long ago: dropped
    m.bypassed("a.test", "x", 5100.0)  # ahead of now (sniffer clock skew): later
    assert m.figures(5005.0)["a.test"].bypassed == 0
    assert m.figures(5105.0)["a.test"].bypassed == 1


def test_hosts_are_bounded() -> None:
    m = BypassMeter(window_s=60, bucket_s=10, max_hosts=2)
    for i in range(5):
        m.bypassed(f"h{i}.test", "x", 100.0)
    assert set(m.figures(101.0)) == {"h0.test", "h1.test"} and m.overflow == 3


def test_high_and_max_ignore_hosts_with_few_requests() -> None:
    m = BypassMeter(window_s=60)
    m.bypassed("few.test", "x", 10.0, n=3)  # ratio 1.0 but only 3 requests
    m.bypassed("leaky.test", "x", 10.0, n=30)
    m.served("leaky.test", 10.0, n=70)
    m.served("fine.test", 10.0, n=100)
    f = m.figures(11.0)
    assert high_bypass(f, threshold=0.2, min_requests=20) == ["leaky.test"]
    assert max_ratio(f, min_requests=20) == pytest.approx(0.3)
    assert max_ratio({}, 20) == 0.0


def test_record_fields_carry_the_consoles_name() -> None:
    m = BypassMeter(window_s=60)
    m.bypassed("a.test", "dorms", 10.0)
    m.served("a.test", 10.0, n=3)
    m.served("b.test", 10.0)
    assert record_fields(m.figures(11.0)) == {
        "bypass_ratio.a.test": 0.25, "bypassed.a.test": 1, "served.a.test": 3, "bypassed.a.test@dorms": 1,
        "bypass_ratio.b.test": 0.0, "bypassed.b.test": 0, "served.b.test": 1}
