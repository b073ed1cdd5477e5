"""Every port a steered host uses reaches the edge (issue 18): the edge listens on its port and
every sniffed port, reports what it serves in its health answer, and the DNS steers a host only
while every port of its cached keys is among them (real sockets, dig, a real Edge)."""

from __future__ import annotations

import http.client
import socket
from pathlib import Path

from cachestore.paths import object_relpath
from dns_redirect.edge import Edge, start_listeners
from dns_redirect.index import CacheIndex
from dns_redirect.server import DnsServer, served_ports
from heatcache.cachekey import KeyRules
from heatcache.contract import CacheEvent
from heatcache.netutil import free_port
from heatcache.settings import load_settings
from tests.conftest import StartDnsmasq
from tests.dns_redirect.test_dig import dig
from tests.loopthread import on_loop_thread

NODE = "192.0.2.10"


def test_steered_only_while_the_edge_serves_every_port_of_the_hosts_keys(tmp_path: Path,
                                                                           dnsmasq_factory: StartDnsmasq) -> None:
    upstream = dnsmasq_factory({"both.lab.test": "127.0.0.2", "blocked.lab.test": "127.0.0.2"})
    edge_port, extra = free_port(), free_port()
    blocker = socket.socket()  # a sniffed port someone else holds: the edge cannot serve it
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    blocked = blocker.getsockname()[1]
    settings = load_settings(state_dir=tmp_path, edge_host="127.0.0.1", edge_port=edge_port,
                             sniff_ports=(edge_port, extra, blocked), edge_tls_ports=(), dns_port=0,
                             node_address=NODE, upstream_dns=(upstream.upstream,), dns_ttl=5,
                             dns_client_networks=("127.0.0.0/8",), dns_health_interval_s=0.5,
                             edge_health_url=f"http://127.0.0.1:{edge_port}/.heatcache/health")
    index = CacheIndex()
    on_extra = f"http://both.lab.test:{extra}/a"
    for key in (f"http://both.lab.test:{edge_port}/a", on_extra, f"http://blocked.lab.test:{edge_port}/a",
                f"http://blocked.lab.test:{blocked}/b"):
        rel = object_relpath(key)
        (settings.cache_root / rel).parent.mkdir(parents=True, exist_ok=True)
        (settings.cache_root / rel).write_bytes(b"hit")
        index.apply(CacheEvent(key, "cached", path=rel, size=3))
    assert index.ports_of("both.lab.test") == {("http", edge_port), ("http", extra)}
    edge = Edge(settings, index, KeyRules.load())
    dns = DnsServer(settings, index)
    try:
        with on_loop_thread(lambda: start_listeners(edge, settings), edge.stop, stop_timeout=10):
            assert sorted(edge.ports) == sorted([edge_port, extra])  # not the blocked one
            conn = http.client.HTTPConnection("127.0.0.1", extra, timeout=10)  # the second listener serves hits
            conn.request("GET", "/a", headers={"Host": f"both.lab.test:{extra}"})
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (200, b"hit")
            conn.close()
            with on_loop_thread(dns.start, dns.stop):
                assert dns.edge_ports == (frozenset({edge_port, extra}), frozenset())
                assert dig(dns.port, "both.lab.test", "A").answer[0].endswith(f"A {NODE}")
                # one of its keys uses a port the edge does not serve: resolved normally
                assert dig(dns.port, "blocked.lab.test", "A").answer[0].endswith("A 127.0.0.2")
                assert dig(dns.port, "+tcp", "blocked.lab.test", "A").answer[0].endswith("A 127.0.0.2")
                # the object on the unserved port goes away: the host is steered again
                index.remove(f"http://blocked.lab.test:{blocked}/b")  # (no follower writes it here)
                assert dig(dns.port, "blocked.lab.test", "A").answer[0].endswith(f"A {NODE}")
    finally:
        blocker.close()


def test_health_answer_parsing() -> None:
    assert served_ports({"ok": True}) is None  # an edge that does not say: no per-port check
    assert served_ports({"ports": [80, 8080, "x"], "tls_ports": [443]}) == (frozenset({80, 8080}), frozenset({443}))
    assert served_ports({"ports": [80], "tls_ports": "443"}) == (frozenset({80}), frozenset())
    assert served_ports([1, 2]) is None
