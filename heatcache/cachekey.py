"""Cache-key normalization: one object fetched under many URLs is cached once.

``scheme://host[:port]/path?kept-query`` with a lower-case host, the default port dropped, the
fragment dropped and tracking/session query parameters removed by per-site rules loaded from a
JSON file (data, not code). Pure functions; the sniffer computes the key once and every later
stage carries it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from urllib.parse import unquote_plus

import orjson

DEFAULT_PORTS = {"http": 80, "https": 443}
_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST_RE = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?$")


class BadUrl(ValueError):
    """A host or request target that cannot name a cacheable object."""


class Patterns:
    """Parameter names to drop: exact names and ``prefix*`` patterns, matched case-insensitively."""

    __slots__ = ("exact", "prefixes")

    def __init__(self, patterns: Iterable[str]) -> None:
        pats = [p.lower() for p in patterns]
        self.exact = frozenset(p for p in pats if not p.endswith("*"))
        self.prefixes = tuple(p[:-1] for p in pats if p.endswith("*"))

    def match(self, name: str) -> bool:
        lower = name.lower()
        return lower in self.exact or (bool(self.prefixes) and lower.startswith(self.prefixes))


@dataclass(frozen=True, slots=True)
class SiteRule:
    host: str  # applies to this host and its subdomains
    keep: frozenset[str] | None  # only these names survive (None: no keep-list)
    drop: Patterns


@dataclass(frozen=True)
class KeyRules:
    """Query-parameter rules: global drops plus per-site keep/drop lists."""

    drop: Patterns = field(default_factory=lambda: Patterns(()))
    sites: tuple[SiteRule, ...] = ()
    _site_memo: dict[str, SiteRule | None] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_json(cls, raw: bytes) -> KeyRules:
        data = orjson.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("cache-key rules must be a JSON object")
        sites = []
        for site in data.get("sites", []):
            keep = site.get("keep")
            sites.append(
                SiteRule(
                    host=str(site["host"]).lower().rstrip("."),
                    keep=None if keep is None else frozenset(map(str, keep)),
                    drop=Patterns(map(str, site.get("drop", []))),
                )
            )
        # Longest host first so the most specific rule wins.
        sites.sort(key=lambda s: -len(s.host))
        return cls(drop=Patterns(map(str, data.get("drop", []))), sites=tuple(sites))

    @classmethod
    def load(cls, path: Path | None = None) -> KeyRules:
        """Rules from ``path``, or the ones shipped with heatcache."""
        if path is None:
            raw = resources.files("heatcache").joinpath("data/cache_key_rules.json").read_bytes()
        else:
            raw = Path(path).read_bytes()
        return cls.from_json(raw)

    def site_for(self, host: str) -> SiteRule | None:
        memo = self._site_memo
        if host in memo:
            return memo[host]
        found = None
        for site in self.sites:
            if host == site.host or host.endswith("." + site.host):
                found = site
                break
        if len(memo) > 65_536:
            memo.clear()
        memo[host] = found
        return found


def split_host(host_header: str, scheme: str = "http") -> tuple[str, int]:
    """Validate a Host header value; return (lower-case host, port). Raise BadUrl if hostile."""
    text = host_header.strip().lower()
    if not text or len(text) > 260:
        raise BadUrl("empty or oversized host")
    port = DEFAULT_PORTS.get(scheme, 80)
    if text.startswith("["):
        inner, sep, rest = text[1:].partition("]")
        if not sep:
            raise BadUrl("unterminated IPv6 literal")
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            raise BadUrl("bad IPv6 literal") from None
        host = f"[{inner}]"
        if rest:
            if not rest.startswith(":"):
                raise BadUrl("junk after IPv6 literal")
            port = _port(rest[1:])
        return host, port
    name, sep, port_s = text.partition(":")
    if sep:
        port = _port(port_s)
    name = name.rstrip(".")
    if not _HOST_RE.match(name):
        raise BadUrl(f"bad host {name[:64]!r}")
    return name, port


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 65536:  # "¹".isdigit() is True
        raise BadUrl(f"bad port {text[:8]!r}")
    return int(text)


def host_with_port(host: str, port: int, scheme: str = "http") -> str:
    """``host`` or ``host:port``, dropping the scheme's default port."""
    return host if DEFAULT_PORTS.get(scheme) == port else f"{host}:{port}"


def cache_key(host_header: str, target: str, rules: KeyRules, scheme: str = "http") -> str:
    """Normalize a request (Host header + request target) into the cache key.

    ``target`` is origin-form (``/path?q``) or absolute-form (``http://host/path``); for the
    latter the URL's own authority wins, as RFC 9112 says.
    """
    if target.startswith(("http://", "https://")):
        scheme, _, rest = target.partition("://")
        authority, slash, tail = rest.partition("/")
        host_header, target = authority, slash + tail if slash else "/"
    if not target.startswith("/"):
        raise BadUrl("request target must be origin-form or absolute-form")
    if any(c in target for c in "\r\n\x00 "):
        raise BadUrl("control characters in target")
    host, port = split_host(host_header, scheme)
    path, _, query = target.partition("?")
    query = query.partition("#")[0]
    path = path.partition("#")[0]
    kept = _filter_query(query, host, rules)
    key = f"{scheme}://{host_with_port(host, port, scheme)}{path}"
    return f"{key}?{kept}" if kept else key


def _filter_query(query: str, host: str, rules: KeyRules) -> str:
    """Drop tracking parameters; kept ones stay exactly as sent (encoding and order)."""
    if not query:
        return ""
    site = rules.site_for(host)
    out = []
    for part in query.split("&"):
        if not part:
            continue
        name = part.partition("=")[0]
        if "%" in name or "+" in name:
            name = unquote_plus(name)
        if rules.drop.match(name):
            continue
        if site is not None:
            if site.keep is not None and name not in site.keep:
                continue
            if site.drop.match(name):
                continue
        out.append(part)
    return "&".join(out)


def key_host(key: str) -> str:
    """The host (without port) of a cache key, for steering decisions."""
    authority = key.partition("://")[2].partition("/")[0]
    if authority.startswith("["):
        return authority.partition("]")[0] + "]"
    return authority.partition(":")[0]


def key_mismatch(key: str, url: str, rules: KeyRules) -> str | None:
    """Why ``key`` is not the cache key the running ``rules`` compute from ``url`` (None if it is).

    Consumers call it on decoded events: a message whose key does not belong to its URL would
    store one object under another object's name."""
    try:
        expected = cache_key("", url, rules)
    except BadUrl as exc:
        return f"URL has no cache key: {exc}"
    if expected != key:
        return f"cache key {key[:120]!r} is not the key of its URL ({expected[:120]!r})"
    return None


def redact_url(url: str) -> str:
    """``url`` with any ``user:password@`` removed, for logs and error messages."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, tail = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    return f"{scheme}{sep}{authority}{slash}{tail}"
