"""The fetcher's pre-flight: walk the redirect chain ourselves, one request per hop, without
following; every hop resolved through the upstream resolver, checked against the address policy
(heatcache/safety.py) and pinned. aria2c then gets only the final pinned URL, so it never
connects anywhere the walk did not check. The final answer's headers give the validators, type,
length and freshness (aria2's RPC returns no response headers), checked against the finished
file afterwards.

The hop decisions are pure (heatcache/redirects.py); :func:`judge` (pure) says whether the final
answer is worth downloading, :func:`parse_head` (pure) reads an answer's head.

The walk is a coroutine (:func:`walk`), run on the fetcher's one asyncio thread: a burst of hot
URLs pre-flights together without a thread each (measured in bench/fetch: 16 pre-flight threads
and the loop starting them fought over the GIL, the median job's HEAD went out ~30 ms after its
message; each resolution also ran its own event loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import io
from collections.abc import Awaitable, Callable
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


def request_head(method: str, hop: Hop) -> bytes:
    """The pre-flight's request for one hop (pure)."""
    return (f"{method} {hop.target} HTTP/1.1\r\nHost: {hop.host_header}\r\nUser-Agent: {USER_AGENT}\r\n"
            "Accept-Encoding: identity\r\nConnection: close\r\n\r\n").encode("latin-1")


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """Status and headers (lower-case names, repeated ones joined with ", ") of an answer's head
    (pure); http.client.BadStatusLine for what is not an HTTP/1.x status line."""
    line, _, rest = head.partition(b"\r\n")
    parts = line.decode("latin-1").split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit() or len(parts[1]) != 3:
        raise http.client.BadStatusLine(line.decode("latin-1")[:100])
    headers: dict[str, str] = {}
    for name, value in http.client.parse_headers(io.BytesIO(rest)).items():
        lower = name.lower()
        headers[lower] = f"{headers[lower]}, {value}" if lower in headers else value
    return int(parts[1]), headers


async def _ask(address: str, hop: Hop, method: str, timeout: float, source: str) -> tuple[int, dict[str, str]]:
    async def exchange() -> tuple[int, dict[str, str]]:
        reader, writer = await asyncio.open_connection(address, hop.port,
                                                       local_addr=(source, 0) if source else None)
        try:
            writer.write(request_head(method, hop))
            while True:  # the body (GET fallback) is not read
                status, headers = parse_head(await reader.readuntil(b"\r\n\r\n"))
                if not 100 <= status < 200:  # an interim answer (as http.client skips them)
                    return status, headers
        finally:
            writer.transport.abort()  # at once, whatever of a body is on its way
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    try:
        return await asyncio.wait_for(exchange(), timeout)
    except asyncio.IncompleteReadError as exc:
        raise ConnectionError(f"{hop.url}: connection closed before an answer") from exc
    except asyncio.LimitOverrunError as exc:
        raise http.client.HTTPException(f"{hop.url}: answer head over 64 KiB") from exc
    except TimeoutError as exc:
        raise TimeoutError(f"{hop.url}: no answer within {timeout:.0f} s") from exc


async def walk(url: str, resolve: Callable[[str], Awaitable[str]], *, max_hops: int = MAX_HOPS,
               timeout: float = 10.0, source: str = "") -> Preflight:
    """HEAD each hop (GET when the origin refuses HEAD); raises HopRefused, ForbiddenAddress,
    ResolveError or OSError with the reason."""
    hop = parse_hop(url)
    chain: list[str] = []
    for made in range(1, max_hops + 1):
        address = await resolve(hop.host)  # upstream resolver + address policy, for this hop
        status, headers = await _ask(address, hop, "HEAD", timeout, source)
        if status in (405, 501):
            status, headers = await _ask(address, hop, "GET", timeout, source)
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
