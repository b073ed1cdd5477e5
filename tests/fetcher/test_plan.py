"""Unit tests for fetch planning and origin address safety (fetcher/app.py, heatcache/safety.py)."""

from __future__ import annotations

import pytest

from fetcher.app import FetchError, plan_fetch
from heatcache.safety import ForbiddenAddress, check_origin_address


def test_pins_address_and_keeps_host() -> None:
    t = plan_fetch("http://Example.com:8080/a/b.iso?x=1", lambda h: "203.0.113.9")
    assert t.url == "http://203.0.113.9:8080/a/b.iso?x=1"
    assert t.host_header == "example.com:8080" and t.host == "example.com"
    t6 = plan_fetch("http://example.com/", lambda h: "2001:db8::5")
    assert t6.url == "http://[2001:db8::5]:80/"


@pytest.mark.parametrize("url", ["ftp://example.com/x", "http://user:pw@example.com/x", "http://bad host/x",
                                 "file:///etc/passwd", "http://example.com:0/"])
def test_refuses_bad_urls(url: str) -> None:
    with pytest.raises(FetchError):
        plan_fetch(url, lambda h: "203.0.113.9")


@pytest.mark.parametrize("addr", ["127.0.0.1", "10.1.2.3", "192.168.0.1", "169.254.169.254", "::1", "fc00::1",
                                  "::ffff:10.0.0.1", "100.64.0.1", "0.0.0.0", "224.0.0.1"])
def test_internal_addresses_refused(addr: str) -> None:
    with pytest.raises(ForbiddenAddress):
        check_origin_address(addr, allow_private=False)


def test_public_and_allowed_private() -> None:
    assert check_origin_address("8.8.8.8", allow_private=False) == "8.8.8.8"
    assert check_origin_address("127.0.0.2", allow_private=True) == "127.0.0.2"
    with pytest.raises(ForbiddenAddress):
        check_origin_address("224.0.0.1", allow_private=True)
