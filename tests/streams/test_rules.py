"""Unit tests of the admission rules and the one decide() function (streams/rules.py)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from heatcache.settings import load_settings
from streams.rules import Backoff, CacheView, Rules, RulesError, decide, load_rules, rules_from_settings
from streams.windows import Heat, WindowSpec

SPEC = WindowSpec(window_s=3600, step_s=60, grace_s=10)
K = "http://example.com/f.iso"


def heat(*events: tuple[float, str]) -> Heat:
    h = Heat()
    for ts, client in events:
        h.add(SPEC.pane(ts), client, False, 0, SPEC)
    return h


def write(tmp_path: Path, body: object) -> Path:
    path = tmp_path / "rules.json"
    path.write_bytes(orjson.dumps(body))
    return path


def test_default_rule_needs_two_clients_in_the_window() -> None:
    rules = Rules.simple(SPEC, min_clients=2)
    assert decide(rules, K, heat((0, "a"), (5, "a")), CacheView(), 5) == (False, "below-rule", heat(
        (0, "a"), (5, "a")).stats(0, 3600))
    d = decide(rules, K, heat((0, "a"), (100, "b")), CacheView(), 100)
    assert d.admit and d.reason == "heat" and d.stats is not None and d.stats.clients == 2
    # the same two clients, but the first one an hour before the window's end: not hot
    assert not decide(rules, K, heat((0, "a"), (3700, "b")), CacheView(), 3700).admit


def test_cache_knowledge() -> None:
    rules = Rules.simple(SPEC, min_clients=1, backoff=Backoff(base_s=60, max_s=600))
    h = heat((0, "a"))
    assert decide(rules, K, h, CacheView(state="cached"), 10).reason == "cached"
    assert decide(rules, K, h, CacheView(fetching=True), 10).reason == "fetching"
    assert decide(rules, K, h, CacheView(state="evicted"), 10) [:2] == (True, "refetch-evicted")
    assert decide(rules, K, h, CacheView(state="purged"), 10)[:2] == (True, "refetch-purged")
    # failed: back-off doubles per consecutive failure, on event time
    failed = CacheView(state="failed", ts=100, failures=3)
    assert decide(rules, K, heat((300, "a")), failed, 339).reason == "backoff"  # 100 + 240 > 339
    assert decide(rules, K, heat((340, "a")), failed, 340)[:2] == (True, "retry-failed")
    # evicted but no longer hot: nothing
    assert not decide(Rules.simple(SPEC, min_clients=2), K, h, CacheView(state="evicted"), 10).admit


def test_first_access_and_pins() -> None:
    rules = Rules.simple(SPEC, min_clients=5, first_access=True)
    assert decide(rules, K, heat((0, "a")), CacheView(), 0)[:2] == (True, "first-access")
    strict = Rules.simple(SPEC, min_clients=5)
    assert decide(strict, K, heat((0, "a")), CacheView(), 0, pin="always").admit
    assert decide(strict, K, heat(*[(0, f"c{i}") for i in range(9)]), CacheView(), 0, pin="never").reason == (
        "pinned-never")


def test_rules_file_overrides_allow_and_deny(tmp_path: Path) -> None:
    path = write(tmp_path, {
        "default": {"min_clients": 3},
        "hosts": {"debian.org": {"min_clients": 1}, "*.slow.example": {"window_s": 600, "min_requests": 2}},
        "paths": [{"pattern": "*.iso", "min_clients": 2}, {"pattern": "/private/*", "deny": True}],
        "deny_hosts": ["ads.example"],
    })
    rules = load_rules(path, SPEC)
    assert rules.rule_for("example.com", "/a").min_clients == 3
    assert rules.rule_for("ftp.debian.org", "/pool/x.deb").min_clients == 1  # subdomain matches
    assert rules.rule_for("debian.org", "/x.iso").source == "paths[*.iso]"  # path wins over host
    assert rules.rule_for("a.slow.example", "/x").window_s == 600
    assert rules.rule_for("slow.example", "/x").window_s == 3600  # "*." means subdomains only
    assert rules.rule_for("example.com", "/private/x").deny
    assert rules.rule_for("cdn.ads.example", "/x").deny
    one = heat((0, "a"))
    assert decide(rules, "http://ftp.debian.org/pool/x.deb", one, CacheView(), 0).admit
    assert decide(rules, "http://cdn.ads.example/x", heat(*[(0, f"c{i}") for i in range(9)]), CacheView(),
                  0).reason == "deny"
    # a rule window: 600 s on a.slow.example, so two requests an hour apart are not enough
    two = heat((0, "a"), (3000, "b"))
    assert not decide(rules, "http://a.slow.example/x", two, CacheView(), 3000).admit


def test_allow_list_admits_only_listed_hosts(tmp_path: Path) -> None:
    rules = load_rules(write(tmp_path, {"allow_hosts": ["ubuntu.com"]}), SPEC, min_clients=1)
    assert decide(rules, "http://archive.ubuntu.com/a", heat((0, "a")), CacheView(), 0).admit
    assert decide(rules, "http://example.com/a", heat((0, "a")), CacheView(), 0).reason == "deny"


@pytest.mark.parametrize("body", [
    {"default": {"min_clients": 0}},
    {"hosts": {"a": {"typo": 1}}},
    {"paths": [{"min_clients": 1}]},
    {"hosts": {"a": {"window_s": 7200}}},  # longer than the heat window
    {"default": {"window_s": 90}},  # not a multiple of the step
    [],
])
def test_invalid_rules_refused_at_start_up(tmp_path: Path, body: object) -> None:
    with pytest.raises(RulesError):
        load_rules(write(tmp_path, body), SPEC)


def test_rules_from_settings(tmp_path: Path) -> None:
    rules = rules_from_settings(load_settings(heat_window_s=600, heat_min_clients=1))
    assert rules.spec.step_s == 25 and rules.default.min_clients == 1
    with pytest.raises(RulesError, match="STEP"):
        rules_from_settings(load_settings(heat_window_s=600, heat_step_s=7))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(RulesError, match="not JSON"):
        rules_from_settings(load_settings(heat_rules=tmp_path / "bad.json"))
