"""Redirect hops, decided purely: which URL a hop may go to, and how to pin it.

aria2c follows redirects with no switch to stop it (and would resend the pinned Host header to
the next host), so the fetcher walks a redirect chain itself, one request per hop without
following, and hands aria2c only the final pinned URL; the edge's pass-through never follows
(the client does, through the real DNS). For every hop the caller resolves :attr:`Hop.host`
through the upstream resolver and checks the address with ``heatcache.safety`` before it
connects; :func:`pinned_url` then names the checked address, never the host again.

Pure functions, no I/O: ``parse_hop`` (is this URL something heatcache may fetch at all?) and
``follow`` (given a response, where does the next hop go, or why not).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from heatcache.cachekey import BadUrl, split_host

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_HOPS = 5
MAX_URL_LENGTH = 4096  # aria2c truncates longer URLs; never cache under a key it did not fetch


class HopRefused(ValueError):
    """A hop heatcache must not make; the message is the reason recorded as the fetch's error."""


@dataclass(frozen=True, slots=True)
class Hop:
    """One request of a chain: the URL as named, and what to send."""

    url: str  # as the origin named it (absolute)
    host: str  # to resolve and check
    port: int
    host_header: str  # the authority, as sent in Host
    target: str  # path?query


def parse_hop(url: str) -> Hop:
    """Check a URL heatcache may fetch: http only, no credentials, a valid host and port."""
    if len(url) > MAX_URL_LENGTH:
        raise HopRefused(f"URL longer than {MAX_URL_LENGTH} characters")
    if any(c in url for c in "\r\n\t\0 "):
        raise HopRefused("URL contains whitespace or control characters")
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise HopRefused(f"unsupported scheme {parts.scheme!r}")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise HopRefused("credentials in URL")
    try:
        host, port = split_host(parts.netloc)
    except BadUrl as exc:
        raise HopRefused(str(exc)) from None
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Hop(url=url, host=host, port=port, host_header=parts.netloc.lower(), target=target)


def follow(hop: Hop, status: int, location: str | None, hops_made: int, max_hops: int = MAX_HOPS) -> Hop | None:
    """The next hop after a response of ``status`` to ``hop`` (None: this response is the final one).

    ``hops_made`` counts the requests already made in this chain (1 after the first)."""
    if status not in REDIRECT_STATUSES:
        return None
    if not location:
        raise HopRefused(f"redirect {status} without a Location")
    if hops_made >= max_hops:
        raise HopRefused(f"more than {max_hops - 1} redirects")
    nxt = urljoin(hop.url, location.strip())
    if urlsplit(nxt).fragment:
        nxt = nxt.split("#", 1)[0]
    return parse_hop(nxt)


def pinned_url(hop: Hop, address: str) -> str:
    """The hop's URL with the checked address in place of the host (Host header sent apart)."""
    literal = f"[{address}]" if ":" in address else address
    return f"http://{literal}:{hop.port}{hop.target}"
