"""The edge's one routing decision: what to do with a request, as a pure function.

Both the hit front (``front.py``, plain GET/HEAD on the socket) and the aiohttp path (``edge.py``,
everything else) ask :func:`route`, so they refuse, serve and pass through alike; before, each ran
the same checks in the same order, kept in step by a docstring.

- ``Refuse``: an answer the edge gives itself (status and the counter to bump): loops, bad
  requests, methods no proxy should carry, hosts not steered here (the edge is no open proxy).
- ``Hit``: the index has the object; serve it from disk.
- ``Pass``: a read that misses: stream it from the origin, and it may be stored as it passes
  (``may_fill`` decides on the response). A host unsteered moments ago is still served: clients
  may hold our DNS answer for up to a TTL and must not be stranded.
- ``Passthrough``: stream from the origin, never store: requests that are not plain reads (a
  POST to a steered host must still reach its site).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple, Protocol

from heatcache.cachekey import BadUrl, KeyRules, cache_key, split_host
from heatcache.contract import CacheEvent

VIA = "1.1 heatcache"
READS = frozenset({"GET", "HEAD"})
# carried to the origin unchanged; CONNECT (tunnels) and TRACE (reflects headers) never are
FORWARDED = READS | frozenset({"POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Refuse(NamedTuple):
    status: int
    reason: str  # counted as refused.<reason>
    text: str


class Hit(NamedTuple):
    entry: CacheEvent
    version: int  # the index version the entry belongs to (open-file caches key on it)
    host: str  # where to pass through if the file turns out gone
    port: int
    key: str


class Pass(NamedTuple):
    host: str
    port: int
    key: str


class Passthrough(NamedTuple):
    host: str
    port: int
    key: str


Route = Refuse | Hit | Pass | Passthrough


class IndexView(Protocol):
    """What routing reads from the cache index."""

    version: int

    def is_steered(self, host: str) -> bool: ...
    def recently_steered(self, host: str, grace_s: float, now: float | None = None) -> bool: ...
    def get(self, cache_key: str) -> CacheEvent | None: ...


class KeyMemo:
    """(Host header, target) -> (cache key, host, port): computing a key costs more than the rest
    of a small hit, and a popular object is asked under the same few spellings. Deterministic for
    fixed rules, so caching it keeps :func:`route` pure."""

    def __init__(self, rules: KeyRules, limit: int = 8192) -> None:
        self.rules = rules
        self.limit = limit
        self._memo: dict[tuple[str, str], tuple[str, str, int]] = {}

    def __call__(self, host_header: str, target: str) -> tuple[str, str, int]:
        """Raises BadUrl for a request no key can be made of."""
        memo = self._memo.get((host_header, target))
        if memo is None:
            host, port = split_host(host_header)
            memo = (cache_key(host_header, target, self.rules), host, port)
            if len(self._memo) >= self.limit:
                self._memo.clear()
            self._memo[(host_header, target)] = memo
        return memo


NOT_STEERED = Refuse(421, "not-steered", "host not served here\n")
LOOP = Refuse(508, "loop", "request loop\n")
METHOD = Refuse(405, "method", "method not allowed\n")


def route(method: str, host_header: str, target: str, via: Iterable[str], index: IndexView, keys: KeyMemo,
          grace_s: float, now: float) -> Route:
    """The decision for one request. ``via``: every Via header value; ``grace_s``: how long a host
    unsteered is still passed through (two DNS TTLs); ``now``: monotonic time."""
    if method not in FORWARDED:
        return METHOD
    if any(VIA in v for v in via):  # our own request come back: the origin resolves to us
        return LOOP
    try:
        key, host, port = keys(host_header, target)
    except BadUrl as exc:
        return Refuse(400, "bad-request", f"bad request: {exc}\n")
    if not index.is_steered(host) and not index.recently_steered(host, grace_s, now):
        return NOT_STEERED
    if method not in READS:
        return Passthrough(host, port, key)
    entry = index.get(key)
    if entry is not None:
        return Hit(entry, index.version, host, port, key)
    return Pass(host, port, key)


UNKNOWN_NAME = Refuse(421, "tls-not-steered", "")
NO_SNI = Refuse(400, "tls-no-sni", "")


def route_tls(sni: str | None, port: int, index: IndexView, grace_s: float, now: float) -> Refuse | Passthrough:
    """The decision for a TLS connection by its ClientHello's server name: passed through (never
    terminated, never stored) to that name's origin on the same port while the name is steered
    or was unsteered less than ``grace_s`` ago; refused otherwise (the node is no open relay)."""
    if sni is None:
        return NO_SNI
    if not index.is_steered(sni) and not index.recently_steered(sni, grace_s, now):
        return UNKNOWN_NAME
    return Passthrough(sni, port, "")
