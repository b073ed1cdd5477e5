"""Unit tests for settings (heatcache/settings.py)."""

from __future__ import annotations

import pytest

from heatcache.settings import SettingsError, load_settings, parse_hostport


def test_environment_is_read_with_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEATCACHE_SNIFF_PORTS", "80, 8080,3128")
    monkeypatch.setenv("HEATCACHE_UPSTREAM_DNS", "10.0.0.53,[2001:db8::53]:5300")
    monkeypatch.setenv("HEATCACHE_HEAT_MIN_CLIENTS", "1")
    s = load_settings()
    assert s.sniff_ports == (80, 8080, 3128)
    assert s.upstream_dns == ("10.0.0.53", "[2001:db8::53]:5300")
    assert s.heat_min_clients == 1


def test_frozen() -> None:
    s = load_settings()
    with pytest.raises(ValueError):
        s.dns_ttl = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("var", "value"),
    [("HEATCACHE_SNIFF_PORTS", "0"), ("HEATCACHE_NODE_ADDRESS", "not-an-ip"), ("HEATCACHE_HEAT_MIN_CLIENTS", "0"),
     ("HEATCACHE_CATALOG_URL", "postgres://x"), ("HEATCACHE_UPSTREAM_DNS", "1.2.3.4:99999"),
     ("HEATCACHE_NO_SUCH_THING", "1")],
)
def test_invalid_values_fail_at_startup_naming_the_variable(monkeypatch: pytest.MonkeyPatch, var: str,
                                                            value: str) -> None:
    monkeypatch.setenv(var, value)
    if var == "HEATCACHE_NO_SUCH_THING":
        load_settings()  # unknown environment variables are ignored, unknown fields are not
        with pytest.raises(SettingsError):
            load_settings(no_such_thing=1)
        return
    with pytest.raises(SettingsError, match=var):
        load_settings()


def test_topics_and_defaults() -> None:
    s = load_settings(topic_prefix="x-")
    assert s.topic("hot-urls") == "x-hot-urls"
    assert s.heat_window_s == 86400 and s.heat_min_clients == 2
    assert s.catalog.startswith("sqlite:///")


def test_parse_hostport() -> None:
    assert parse_hostport("1.2.3.4", 53) == ("1.2.3.4", 53)
    assert parse_hostport("1.2.3.4:5353", 53) == ("1.2.3.4", 5353)
    assert parse_hostport("[::1]:54", 53) == ("::1", 54)
    with pytest.raises(ValueError):
        parse_hostport("resolver.example", 53)


def test_secrets_are_secret_and_defaults_refused_outside_labs() -> None:
    from heatcache.settings import default_secrets

    s = load_settings(lab_mode=False)
    assert "change-me" not in repr(s) and "heatcache'" not in repr(s)
    assert default_secrets(s) == ["HEATCACHE_CLIENT_ID_SECRET", "HEATCACHE_ARIA2_SECRET"]
    assert default_secrets(s.model_copy(update={"lab_mode": True})) == []
    mine = s.model_copy(update={"aria2_secret": "mine", "client_id_secret": "mine too"})
    assert mine.aria2_secret.get_secret_value() == "mine" and default_secrets(mine) == []
