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


# -- network labels on pseudonymous client ids (steer, issue 18) ------------------------------
# The sniffer publishes keyed hashes, never addresses, so a consumer cannot tell a client's
# network from its id. With HEATCACHE_CLIENT_ID_NETWORK (default on) a pseudonym of a client in a
# named network carries that name: "dorms/3f2a9b0c1d2e3f405162". The name is what the operator
# chose to see (per-network savings and bypass); a network small enough to single out a person
# would reveal too much, so only networks of at least LABEL_MIN_ADDRESSES addresses label ids.

LABEL_MIN_ADDRESSES = 256
LABEL_MAX_LEN = 64
PSEUDONYM_LEN = 20  # hex characters of a pseudonym (sniffer.events.ClientHasher)


def labelled_networks(spec: Iterable[str]) -> tuple[str, ...]:
    """The ``name=cidr[|cidr...]`` entries that may label pseudonyms: a name of at most
    LABEL_MAX_LEN characters without "/" whose every network has LABEL_MIN_ADDRESSES addresses."""
    out = []
    for name, nets in parse_named_networks(spec).items():
        if (0 < len(name) <= LABEL_MAX_LEN and "/" not in name
                and all(net.num_addresses >= LABEL_MIN_ADDRESSES for net in nets)):
            out.append(name + "=" + "|".join(str(n) for n in nets))
    return tuple(out)


def label_client(network: str, pseudonym: str) -> str:
    """The published id of a client of ``network`` (no label for "")."""
    return f"{network}/{pseudonym}" if network else pseudonym


def client_network(client_id: str) -> str:
    """The network label of a published client id ("" if it has none: a raw address, an
    unlabelled pseudonym)."""
    n = PSEUDONYM_LEN
    if len(client_id) > n + 1 and client_id[-n - 1] == "/":
        tail = client_id[-n:]
        if all(c in "0123456789abcdef" for c in tail):
            return client_id[: -n - 1]
    return ""


def networks_within(networks: Iterable[Network], outer: Iterable[Network]) -> bool:
    """Whether every one of ``networks`` lies inside one of ``outer`` (e.g. a named network
    inside the steering trial's networks)."""
    outer = list(outer)
    nets = list(networks)
    return bool(nets) and all(any(n.version == o.version and n.subnet_of(o) for o in outer)  # type: ignore[arg-type]
                              for n in nets)
