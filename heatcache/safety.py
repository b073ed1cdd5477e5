"""Which origin addresses heatcache may connect to (fetcher and edge share this rule).

A hostile or mistaken URL must never make the cache node fetch from, or proxy to, its own
network: loopback, private, link-local, multicast and reserved addresses are refused unless the
operator explicitly allows private origins (labs, tests).
"""

from __future__ import annotations

import ipaddress


class ForbiddenAddress(ValueError):
    """The origin resolves to an address the cache must not contact."""


def check_origin_address(address: str, allow_private: bool, allowed_networks: tuple[str, ...] = ()) -> str:
    """The address as a string if heatcache may connect to it; ForbiddenAddress otherwise.
    ``allowed_networks`` are private networks allowed even when ``allow_private`` is false (an
    internal mirror; a lab origin without opening loopback to every URL)."""
    ip = ipaddress.ip_address(address.strip("[]"))
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified or ip.is_multicast:
        raise ForbiddenAddress(f"{ip} is not a unicast origin")
    if not allow_private and not ip.is_global:
        if not any(ip in ipaddress.ip_network(n, strict=False) for n in allowed_networks):
            raise ForbiddenAddress(f"{ip} is not a public address")
    return str(ip)
