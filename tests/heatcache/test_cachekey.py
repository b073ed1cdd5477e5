"""Unit tests for cache-key normalization (heatcache/cachekey.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from heatcache.cachekey import BadUrl, KeyRules, cache_key, key_host, split_host

RULES = KeyRules.load()


@pytest.mark.parametrize(
    ("host", "target", "expected"),
    [
        ("Example.COM", "/a/b", "http://example.com/a/b"),
        ("example.com:80", "/a", "http://example.com/a"),
        ("example.com:8080", "/a", "http://example.com:8080/a"),
        ("example.com.", "/a", "http://example.com/a"),
        ("example.com", "/v.mp4?id=7&utm_source=news&fbclid=zz", "http://example.com/v.mp4?id=7"),
        ("example.com", "/p#frag", "http://example.com/p"),
        ("ignored.org", "http://Real.ORG:80/x?gclid=1", "http://real.org/x"),
        ("[2001:db8::1]:8080", "/x", "http://[2001:db8::1]:8080/x"),
        ("au.download.windowsupdate.com", "/f.cab?token=abc&p=1", "http://au.download.windowsupdate.com/f.cab"),
        ("dl.google.com", "/chrome.exe?mh=1&keep=2", "http://dl.google.com/chrome.exe?keep=2"),
    ],
)
def test_normalizes(host: str, target: str, expected: str) -> None:
    assert cache_key(host, target, RULES) == expected


def test_many_tokens_one_key() -> None:
    keys = {cache_key("Dl.Google.com:80", f"/f.bin?mh={i}&utm_campaign=x{i}", RULES) for i in range(20)}
    assert keys == {"http://dl.google.com/f.bin"}


@pytest.mark.parametrize(
    "host",
    ["", "bad host", "a/b", "evil.com@127.0.0.1", "x" * 300, "host:99999", "host:-1", "[::1", "[zz::]", "a..b"],
)
def test_rejects_hostile_hosts(host: str) -> None:
    with pytest.raises(BadUrl):
        cache_key(host, "/x", RULES)


@pytest.mark.parametrize("target", ["x", "*", "/a b", "/a\r\nHost: evil"])
def test_rejects_bad_targets(target: str) -> None:
    with pytest.raises(BadUrl):
        cache_key("example.com", target, RULES)


def test_rules_are_data() -> None:
    rules = KeyRules.from_json(b'{"drop": ["tok"], "sites": [{"host": "cdn.test", "keep": ["v"]}]}')
    assert cache_key("a.test", "/x?tok=1&v=2&w=3", rules) == "http://a.test/x?v=2&w=3"
    assert cache_key("img.cdn.test", "/x?tok=1&v=2&w=3", rules) == "http://img.cdn.test/x?v=2"


def test_key_host_and_split() -> None:
    assert key_host("http://example.com:8080/x?y") == "example.com"
    assert key_host("http://[2001:db8::1]:81/x") == "[2001:db8::1]"
    assert split_host("EXAMPLE.com:8080") == ("example.com", 8080)


@given(st.one_of(st.text(max_size=40), st.from_regex(r"[a-zA-Z0-9.-]{1,30}(:[0-9]{1,5})?", fullmatch=True)),
       st.text(max_size=60))
def test_never_raises_anything_but_badurl_and_is_idempotent(host: str, target: str) -> None:
    try:
        key = cache_key(host, "/" + target, RULES)
    except BadUrl:
        return
    assert key.startswith("http://")
    authority = key[len("http://"):].partition("/")[0]
    again = cache_key(authority, key[len("http://") + len(authority):], RULES)
    assert again == key


def test_key_must_be_the_key_of_its_url() -> None:
    from heatcache.cachekey import key_mismatch

    rules = KeyRules.from_json(b'{"drop": ["utm_*"]}')
    assert key_mismatch("http://h.example/a?x=1", "http://h.example/a?x=1&utm_source=z", rules) is None
    assert "is not the key of its URL" in (key_mismatch("http://other.example/a", "http://h.example/a", rules) or "")
    assert "no cache key" in (key_mismatch("http://h.example/a", "http://u:p@h.example/a", rules) or "")


def test_credentials_are_redacted() -> None:
    from heatcache.cachekey import redact_url

    assert redact_url("mysql://root:pw@127.0.0.1:3306/db") == "mysql://***@127.0.0.1:3306/db"
    assert redact_url("http://h/a@b") == "http://h/a@b"
