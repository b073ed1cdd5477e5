"""The DNS server as resolvers and dig see it (issue 18), on both UDP lanes and over TCP:
the client's EDNS buffer size holds on cached forwarded answers, forged (steered) answers never
claim AD, copy CD and echo DO like dnsmasq does (RFC 3225, RFC 4035 3.2.2), carry an OPT exactly
when the query had one (RFC 6891), keep it when truncated, REFUSED carries neither AA nor AD, and
a steered name's AAAA without a node v6 address is an empty NOERROR with an SOA."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dns_redirect.index import CacheIndex
from dns_redirect.server import DnsServer
from heatcache.contract import CacheEvent
from heatcache.services.dnsmasq import Dnsmasq
from heatcache.settings import load_settings
from tests.loopthread import on_loop_thread

pytestmark = pytest.mark.integration  # a real dnsmasq upstream and dig (module-scoped: started once)

BIG_TXT = ["x" * 240] * 10  # a 2.4 kB answer: larger than 512 and 1232


@dataclass
class Dig:
    status: str
    flags: set[str]
    edns: str | None  # the OPT pseudosection's line, None without OPT
    answer: list[str]
    authority: list[str]
    size: int

    @property
    def edns_flags(self) -> set[str]:
        m = re.search(r"flags:([^;]*);", self.edns or "")
        return set(m.group(1).split()) if m else set()


def dig(port: int, *args: str) -> Dig:
    out = subprocess.run(["dig", "@127.0.0.1", "-p", str(port), "+time=5", "+tries=1", *args],
                         capture_output=True, text=True, check=True).stdout
    status = re.search(r"status: (\w+)", out)
    flags = re.search(r";; flags: ([^;]*);", out)
    size = re.search(r"MSG SIZE\s+rcvd: (\d+)", out)
    assert status and flags and size, out
    section: dict[str, list[str]] = {"ANSWER": [], "AUTHORITY": []}
    current = None
    for line in out.splitlines():
        m = re.match(r";; (\w+) SECTION:", line)
        if m:
            current = m.group(1)
        elif not line.strip():
            current = None
        elif current in section and not line.startswith(";"):
            section[current].append(" ".join(line.split()))
    edns = next((line for line in out.splitlines() if line.startswith("; EDNS:")), None)
    return Dig(status.group(1), set(flags.group(1).split()), edns, section["ANSWER"], section["AUTHORITY"],
               int(size.group(1)))


@pytest.fixture(scope="module")
def upstream() -> Iterator[Dnsmasq]:
    server = Dnsmasq({"origin.lab.test": "127.0.0.2"}, txt={"big.lab.test": BIG_TXT})
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=[True, False], ids=["compiled-lane", "python-lane"])
def server(upstream: Dnsmasq, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[DnsServer]:
    settings = load_settings(state_dir=tmp_path, dns_port=0, node_address="192.0.2.10",
                             upstream_dns=(upstream.upstream,), dns_ttl=7, dns_fastlane=request.param,
                             dns_client_networks=("127.0.0.0/8",))
    index = CacheIndex()
    index.apply(CacheEvent("http://cdn.lab.test/a", "cached", path="objects/aa/a"))
    srv = DnsServer(settings, index, health_check=False)
    with on_loop_thread(srv.start, srv.stop):
        yield srv


@pytest.mark.parametrize("bufsize", [512, 1232])
def test_the_clients_buffer_size_holds_on_cached_answers(server: DnsServer, bufsize: int) -> None:
    full = dig(server.port, "TXT", "big.lab.test", "+bufsize=4096")
    assert full.size > 2400 and "tc" not in full.flags  # cached now, at full size
    for _ in range(3):  # the forwarded path, then the Python cache path, then the lane
        small = dig(server.port, "TXT", "big.lab.test", f"+bufsize={bufsize}", "+ignore")
        assert "tc" in small.flags and small.size <= bufsize and small.edns is not None, small
    assert dig(server.port, "TXT", "big.lab.test", "+tcp").size > 2400  # the retry over TCP gets it all
    noedns = dig(server.port, "TXT", "big.lab.test", "+noedns", "+ignore")
    assert "tc" in noedns.flags and noedns.size <= 512 and noedns.edns is None


@pytest.mark.parametrize("transport", ["+notcp", "+tcp"])
def test_steered_answers_claim_nothing_they_cannot(server: DnsServer, transport: str) -> None:
    for _ in range(3):  # first answers and learned ones alike
        plain = dig(server.port, "A", "cdn.lab.test", transport)
        assert plain.answer == ["cdn.lab.test. 7 IN A 192.0.2.10"]
        assert plain.flags == {"qr", "aa", "rd", "ra"} and plain.edns is not None and not plain.edns_flags
        forged = dig(server.port, "A", "cdn.lab.test", transport, "+adflag", "+cdflag", "+dnssec")
        assert "ad" not in forged.flags and "cd" in forged.flags  # never authenticated; CD copied (RFC 4035)
        assert forged.edns_flags == {"do"}  # DO echoed (RFC 3225)
        noedns = dig(server.port, "A", "cdn.lab.test", transport, "+noedns")
        assert noedns.edns is None and noedns.answer == plain.answer


@pytest.mark.parametrize("transport", ["+notcp", "+tcp"])
def test_aaaa_without_a_node_v6_address_is_empty_with_soa(server: DnsServer, transport: str) -> None:
    for _ in range(2):
        reply = dig(server.port, "AAAA", "cdn.lab.test", transport)
        assert reply.status == "NOERROR" and reply.answer == [] and "aa" in reply.flags
        assert len(reply.authority) == 1 and " IN SOA " in reply.authority[0], reply
        assert reply.authority[0].startswith("cdn.lab.test. 7 IN SOA") and reply.authority[0].endswith(" 7")


def test_refused_carries_neither_aa_nor_ad(upstream: Dnsmasq, tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path, dns_port=0, upstream_dns=(upstream.upstream,),
                             dns_client_networks=("10.9.9.0/24",))  # not us
    srv = DnsServer(settings, CacheIndex(), health_check=False)
    with on_loop_thread(srv.start, srv.stop):
        for transport in ("+notcp", "+tcp"):
            reply = dig(srv.port, "A", "origin.lab.test", transport, "+adflag")
            assert reply.status == "REFUSED" and not reply.flags & {"aa", "ad"}, reply
            assert reply.edns is not None


def test_aaaa_with_a_node_v6_address(upstream: Dnsmasq, tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path, dns_port=0, node_address="192.0.2.10", node_address6="2001:db8::10",
                             upstream_dns=(upstream.upstream,), dns_ttl=7)
    index = CacheIndex()
    index.apply(CacheEvent("http://cdn.lab.test/a", "cached", path="objects/aa/a"))
    srv = DnsServer(settings, index, health_check=False)
    with on_loop_thread(srv.start, srv.stop):
        for transport in ("+notcp", "+tcp"):
            reply = dig(srv.port, "AAAA", "cdn.lab.test", transport)
            assert reply.answer == ["cdn.lab.test. 7 IN AAAA 2001:db8::10"] and reply.authority == []


@pytest.mark.parametrize("fastlane", [True, False], ids=["compiled-lane", "python-lane"])
def test_steering_limited_to_listed_client_networks(upstream: Dnsmasq, tmp_path: Path, fastlane: bool) -> None:
    """A campus trials steering on one subnet: its clients are steered, every other client gets
    the origin's answer, however often each asks (the lane must not replay one to the other)."""
    settings = load_settings(state_dir=tmp_path, dns_port=0, node_address="192.0.2.10", dns_fastlane=fastlane,
                             upstream_dns=(upstream.upstream,), dns_steer_networks=("127.0.5.0/24",))
    index = CacheIndex()
    index.apply(CacheEvent("http://origin.lab.test/a", "cached", path="objects/aa/a"))
    srv = DnsServer(settings, index, health_check=False)
    with on_loop_thread(srv.start, srv.stop):
        for _ in range(3):
            for transport in ("+notcp", "+tcp"):
                trial = dig(srv.port, "A", "origin.lab.test", transport, "-b", "127.0.5.9")
                other = dig(srv.port, "A", "origin.lab.test", transport, "-b", "127.0.0.1")
                assert [a.split()[-1] for a in trial.answer] == ["192.0.2.10"], trial
                assert [a.split()[-1] for a in other.answer] == ["127.0.0.2"], other


def test_the_steering_setting_switches_it_all_off(upstream: Dnsmasq, tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path, dns_port=0, node_address="192.0.2.10", dns_steering=False,
                             upstream_dns=(upstream.upstream,))
    index = CacheIndex()
    index.apply(CacheEvent("http://origin.lab.test/a", "cached", path="objects/aa/a"))
    srv = DnsServer(settings, index, health_check=False)
    with on_loop_thread(srv.start, srv.stop):
        for transport in ("+notcp", "+tcp", "+notcp"):
            reply = dig(srv.port, "A", "origin.lab.test", transport)
            assert [a.split()[-1] for a in reply.answer] == ["127.0.0.2"], reply
