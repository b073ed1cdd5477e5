"""Unit tests for the heat rule (streams/heat.py)."""

from __future__ import annotations

import pytest

from heatcache.contract import RequestEvent
from streams.heat import HeatRule, group_by_key, update

K = "http://example.com/f.iso"


def ev(client: str, ts: float, key: str = K) -> RequestEvent:
    return RequestEvent(ts, client, "GET", "example.com", "/f.iso?t=1", "http://example.com/f.iso?t=1", key)


def test_two_distinct_clients_in_window_is_hot() -> None:
    rule = HeatRule(window_s=3600, min_clients=2)
    state, hot = update(None, [ev("a", 0), ev("a", 10)], rule)
    assert hot is None  # one client, however many requests
    state, hot = update(state, [ev("b", 100)], rule)
    assert hot is not None
    assert (hot.cache_key, hot.clients, hot.heat, hot.host, hot.url) == (K, 2, 3, "example.com",
                                                                         "http://example.com/f.iso?t=1")


def test_outside_window_is_not_hot() -> None:
    rule = HeatRule(window_s=3600, min_clients=2)
    state, _ = update(None, [ev("a", 0)], rule)
    state, hot = update(state, [ev("b", 3601)], rule)
    assert hot is None
    assert list(state["c"]) == ["b"]  # the old client was pruned on event time


def test_event_time_not_arrival_order() -> None:
    rule = HeatRule(window_s=100, min_clients=2)
    state, _ = update(None, [ev("a", 1000)], rule)
    _, hot = update(state, [ev("b", 950)], rule)  # late but inside the window
    assert hot is not None


def test_emits_once_per_window() -> None:
    rule = HeatRule(window_s=100, min_clients=2)
    state, hot = update(None, [ev("a", 0), ev("b", 1)], rule)
    assert hot is not None
    state, hot = update(state, [ev("c", 2)], rule)
    assert hot is None
    state, hot = update(state, [ev("d", 500), ev("e", 501)], rule)
    assert hot is not None  # a new window may admit it again (it may have been evicted)


def test_first_access_is_a_setting_away() -> None:
    _, hot = update(None, [ev("a", 0)], HeatRule(min_clients=1))
    assert hot is not None and hot.reason == "first-access"


def test_min_requests_and_cap() -> None:
    rule = HeatRule(window_s=100, min_clients=1, min_requests=3, max_tracked=4)
    state, hot = update(None, [ev("a", 0), ev("a", 1)], rule)
    assert hot is None
    state, hot = update(state, [ev(f"c{i}", 2 + i) for i in range(10)], rule)
    assert hot is not None
    assert len(state["c"]) == 4 and len(state["t"]) == 4


def test_group_by_key_aggregates_a_batch() -> None:
    tls = RequestEvent(0, "d", "TLS", "example.com", "", "https://example.com/", "https://example.com/")
    groups = group_by_key([ev("a", 0), ev("b", 0, "k2"), ev("c", 0), tls])
    assert {k: len(v) for k, v in groups.items()} == {K: 2, "k2": 1}


def test_rule_validation() -> None:
    with pytest.raises(ValueError):
        HeatRule(min_clients=0)
    with pytest.raises(ValueError):
        HeatRule(min_clients=10, max_tracked=5)
