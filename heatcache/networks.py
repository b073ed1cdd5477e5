"""Client networks named by the operator (``HEATCACHE_CONSOLE_NETWORKS``), for per-network
savings: the edge counts hit bytes under the name of the network a client is in, the console
shows them. Pure; lookups memoized per address (a campus has a bounded set of clients)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_named_networks(spec: Iterable[str]) -> dict[str, list[Network]]:
    """``name=cidr[|cidr...]`` entries (validated by the settings) -> name -> networks."""
    out: dict[str, list[Network]] = {}
    for item in spec:
        name, _, cidrs = item.partition("=")
        out.setdefault(name, []).extend(ipaddress.ip_network(c, strict=False) for c in cidrs.split("|") if c)
    return out


class NetworkNamer:
    """address -> the name of the first named network holding it, or "" (other)."""

    def __init__(self, spec: Iterable[str], memo_size: int = 65536) -> None:
        self.networks = parse_named_networks(spec)
        self._memo: dict[str, str] = {}
        self._memo_size = memo_size

    def __bool__(self) -> bool:
        return bool(self.networks)

    def name(self, address: str) -> str:
        found = self._memo.get(address)
        if found is not None:
            return found
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return ""
        found = next((n for n, nets in self.networks.items() if any(ip in net for net in nets)), "")
        if len(self._memo) >= self._memo_size:
            self._memo.clear()
        self._memo[address] = found
        return found
