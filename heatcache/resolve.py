"""Resolving origin hosts through the upstream resolver, never through heatcache's own DNS
(which would answer a steered host with the cache node: a loop)."""

from __future__ import annotations

import asyncio
import ipaddress

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver

from heatcache.safety import check_origin_address
from heatcache.settings import parse_hostport


class ResolveError(LookupError):
    """The host has no usable address."""


def _configure(res: dns.resolver.BaseResolver, upstreams: tuple[str, ...]) -> None:
    if upstreams:
        servers: list[str | dns.nameserver.Nameserver] = []
        for item in upstreams:
            ip, port = parse_hostport(item, 53)
            servers.append(dns.nameserver.Do53Nameserver(ip, port))
        res.nameservers = servers
    res.lifetime = 5.0


def make_async_resolver(upstreams: tuple[str, ...], cache_entries: int = 0) -> dns.asyncresolver.Resolver:
    """A resolver on ``upstreams`` (the system's when empty); ``cache_entries`` > 0 keeps that
    many answers for their TTL (dnspython's LRU cache: a hot origin is not asked per miss)."""
    res = dns.asyncresolver.Resolver(configure=not upstreams)
    _configure(res, upstreams)
    if cache_entries > 0:
        res.cache = dns.resolver.LRUCache(cache_entries)
    return res


def _literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


def resolve_origin(resolver: dns.asyncresolver.Resolver, host: str, allow_private: bool) -> str:
    """The same, for synchronous callers (the fetcher resolves once per object)."""
    return asyncio.run(resolve_origin_async(resolver, host, allow_private))


async def resolve_origin_async(resolver: dns.asyncresolver.Resolver, host: str, allow_private: bool,
                               allowed_networks: tuple[str, ...] = ()) -> str:
    """First address of ``host`` (A first, then AAAA) if the address policy allows it
    (``check_origin_address``: ``allowed_networks`` = HEATCACHE_ORIGIN_ALLOW_NETWORKS, the same as
    the fetcher's); ForbiddenAddress if it is not."""
    literal = _literal(host)
    if literal is not None:
        return check_origin_address(literal, allow_private, allowed_networks)
    addresses: list[str] = []
    for rdtype in ("A", "AAAA"):
        try:
            answer = await resolver.resolve(host, rdtype)
            addresses += [r.to_text() for r in answer]
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.NoNameservers):
            continue
        except dns.exception.Timeout as exc:
            raise ResolveError(f"timeout resolving {host}") from exc
        if addresses:
            break
    if not addresses:
        raise ResolveError(f"{host} has no address")
    return check_origin_address(addresses[0], allow_private, allowed_networks)
