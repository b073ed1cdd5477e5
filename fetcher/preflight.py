"""The fetcher's pre-flight: walk the redirect chain ourselves, one request per hop, without
following; every hop resolved through the upstream resolver, checked against the address policy
(heatcache/safety.py) and pinned. aria2c then gets only the final pinned URL, so it never
connects anywhere the walk did not check. The final answer's headers give the validators, type,
length and freshness (aria2's RPC returns no response headers), checked against the finished
file afterwards.

The hop decisions are pure (heatcache/redirects.py); :func:`judge` (pure) says whether the final
answer is worth downloading.
"""

from __future__ import annotations

import http.client
from collections.abc import Callable
from dataclasses import dataclass, field

from cachestore.coherence import refuse_to_store
from heatcache.redirects import MAX_HOPS, Hop, follow, parse_hop, pinned_url

USER_AGENT = "heatcache-fetcher"


@dataclass(frozen=True, slots=True)
class Preflight:
    hop: Hop  # the final hop
    address: str  # its checked address
    status: int
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    chain: tuple[str, ...] = ()  # every URL asked, in order

    @property
    def pinned(self) -> str:
        return pinned_url(self.hop, self.address)

    @property
    def length(self) -> int | None:
        value = self.headers.get("content-length", "")
        return int(value) if value.isdigit() else None


def _ask(address: str, hop: Hop, method: str, timeout: float, source: str) -> tuple[int, dict[str, str]]:
    conn = http.client.HTTPConnection(address, hop.port, timeout=timeout,
                                      source_address=(source, 0) if source else None)
    try:
        conn.request(method, hop.target, headers={"Host": hop.host_header, "User-Agent": USER_AGENT,
                                                  "Accept-Encoding": "identity"})
        resp = conn.getresponse()
        headers: dict[str, str] = {}
        for name, value in resp.getheaders():
            lower = name.lower()
            headers[lower] = f"{headers[lower]}, {value}" if lower in headers else value
        return resp.status, headers  # the body (GET fallback) is not read: the connection closes
    finally:
        conn.close()


def walk(url: str, resolve: Callable[[str], str], *, max_hops: int = MAX_HOPS, timeout: float = 10.0,
         source: str = "") -> Preflight:
    """HEAD each hop (GET when the origin refuses HEAD); raises HopRefused, ForbiddenAddress,
    ResolveError or OSError with the reason."""
    hop = parse_hop(url)
    chain: list[str] = []
    for made in range(1, max_hops + 1):
        address = resolve(hop.host)  # upstream resolver + address policy, for this hop
        status, headers = _ask(address, hop, "HEAD", timeout, source)
        if status in (405, 501):
            status, headers = _ask(address, hop, "GET", timeout, source)
        chain.append(hop.url)
        nxt = follow(hop, status, headers.get("location"), made, max_hops)
        if nxt is None:
            return Preflight(hop, address, status, headers, tuple(chain))
        hop = nxt
    raise AssertionError("unreachable: follow() refuses past max_hops")


def judge(pre: Preflight, cap: int) -> str:
    """"" if the final answer should be downloaded, else why not (pure)."""
    reason = refuse_to_store({}, pre.status, pre.headers)
    if reason:
        return f"origin answered {reason}" if reason.startswith("status") else f"not storable: {reason}"
    if pre.headers.get("content-encoding", "identity").lower() not in ("identity", ""):
        return "content-encoded answer"
    length = pre.length
    if length is not None and length > cap:
        return f"Content-Length {length} is over the cap of {cap} bytes"
    return ""
