"""Unit tests for redirect hop decisions (heatcache/redirects.py) and the origin address policy
(heatcache/safety.py)."""

from __future__ import annotations

import pytest

from heatcache.redirects import HopRefused, follow, parse_hop, pinned_url
from heatcache.safety import ForbiddenAddress, check_origin_address


def test_parse_and_pin() -> None:
    hop = parse_hop("http://Example.com:8080/a/b.iso?x=1")
    assert (hop.host, hop.port, hop.host_header) == ("example.com", 8080, "example.com:8080")
    assert hop.target == "/a/b.iso?x=1"
    assert pinned_url(hop, "203.0.113.9") == "http://203.0.113.9:8080/a/b.iso?x=1"
    assert pinned_url(parse_hop("http://example.com"), "2001:db8::5") == "http://[2001:db8::5]:80/"


@pytest.mark.parametrize("url", ["ftp://example.com/x", "http://user:pw@example.com/x", "http://bad host/x",
                                 "file:///etc/passwd", "http://example.com:0/", "https://example.com/",
                                 "http://example.com/" + "a" * 5000, "http://example.com/\r\nX: y"])
def test_refuses_bad_urls(url: str) -> None:
    with pytest.raises(HopRefused):
        parse_hop(url)


def test_follow() -> None:
    hop = parse_hop("http://a.example/dir/file")
    assert follow(hop, 200, None, 1) is None
    assert follow(hop, 302, "/other", 1).url == "http://a.example/other"  # type: ignore[union-attr]
    assert follow(hop, 301, "next#frag", 1).url == "http://a.example/dir/next"  # type: ignore[union-attr]
    assert follow(hop, 307, "http://b.example:81/x", 1).host == "b.example"  # type: ignore[union-attr]
    with pytest.raises(HopRefused, match="without a Location"):
        follow(hop, 302, None, 1)
    with pytest.raises(HopRefused, match="more than"):
        follow(hop, 302, "/again", 6, max_hops=6)
    with pytest.raises(HopRefused, match="scheme"):
        follow(hop, 302, "file:///etc/passwd", 1)


@pytest.mark.parametrize("addr", ["127.0.0.1", "10.1.2.3", "192.168.0.1", "169.254.169.254", "::1", "fc00::1",
                                  "::ffff:10.0.0.1", "100.64.0.1", "0.0.0.0", "224.0.0.1"])
def test_internal_addresses_refused(addr: str) -> None:
    with pytest.raises(ForbiddenAddress):
        check_origin_address(addr, allow_private=False)


def test_public_and_allowed_private() -> None:
    assert check_origin_address("8.8.8.8", allow_private=False) == "8.8.8.8"
    assert check_origin_address("127.0.0.2", allow_private=True) == "127.0.0.2"
    assert check_origin_address("127.0.0.2", False, ("127.0.0.2/32",)) == "127.0.0.2"
    with pytest.raises(ForbiddenAddress):
        check_origin_address("127.0.0.1", False, ("127.0.0.2/32",))
    with pytest.raises(ForbiddenAddress):
        check_origin_address("224.0.0.1", allow_private=True)
