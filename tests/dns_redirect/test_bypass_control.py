"""Leak detection counts only clients that were really steered: the kill switch's timeline
(`control`), network labels on pseudonyms, a steering trial on some networks, and the edge's
own view of which hosts it steers (pure parts; no services)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from dns_redirect.bypass import BypassWatch, edge_steers
from dns_redirect.index import CacheIndex
from heatcache.bypass import SteeringSwitch
from heatcache.contract import CacheEvent, RequestEvent
from heatcache.networks import client_network, label_client, labelled_networks
from heatcache.settings import load_settings

PSEUDO = "3f2a9b0c1d2e3f405162"


def request(host: str, client: str, ts: float) -> RequestEvent:
    return RequestEvent(ts, client, "GET", host, "/a", f"http://{host}/a", f"http://{host}/a")


def steered_index() -> CacheIndex:
    index = CacheIndex()
    index.apply(CacheEvent("http://steered.test/a", "cached", path="objects/00/a"))
    return index


def test_the_switch_timeline() -> None:
    sw = SteeringSwitch(grace_s=30)
    assert sw.steered_at(5) and not sw.stopped  # nothing known: steering is on
    sw.set(True, 100)  # stopped at 100: before it, steering was on
    assert sw.steered_at(99) and not sw.steered_at(100) and not sw.steered_at(150) and sw.stopped
    sw.set(True, 120)  # the same position again changes nothing
    sw.set(False, 200)  # started again: a TTL of grace while clients hold the origin's address
    assert not sw.steered_at(150) and not sw.steered_at(229) and sw.steered_at(230) and sw.steered_at(99)
    started = SteeringSwitch()
    started.set(False, 100)  # the compacted topic's only record is a start: it was stopped before
    assert not started.steered_at(99) and started.steered_at(100)
    off = SteeringSwitch(always_off=True)  # HEATCACHE_DNS_STEERING=false
    assert off.stopped and not off.steered_at(5)
    bounded = SteeringSwitch(keep_s=10)
    for i in range(100):
        bounded.set(i % 2 == 0, float(i))
    assert len(bounded.changes) <= 12 and not bounded.steered_at(98.5) and bounded.steered_at(99.5)


def test_no_bypass_while_steering_is_stopped(tmp_path: Path) -> None:
    counters: Counter[str] = Counter()
    settings = load_settings(state_dir=tmp_path, dns_ttl=10)
    watch = BypassWatch(settings, steered_index().is_steered, counters)
    watch.on_control(True, 1000.0)
    watch.on_events([request("steered.test", "c1", 990.0), request("steered.test", "c1", 1001.0),
                     request("steered.test", "c1", 1005.0)])
    watch.on_control(False, 1100.0)
    watch.on_events([request("steered.test", "c1", 1105.0), request("steered.test", "c1", 1111.0)])
    fields = watch.tick(1120.0)
    assert fields["bypassed.steered.test"] == 2  # before the stop, and after start + one TTL
    assert counters["bypass.steering-off"] == 3 and fields["steering_stopped"] == 0
    watch.on_control(True, 1130.0)
    assert watch.tick(1131.0)["steering_stopped"] == 1
    never = BypassWatch(load_settings(state_dir=tmp_path, dns_steering=False), steered_index().is_steered, Counter())
    never.on_events([request("steered.test", "c1", 1000.0)])
    assert "bypassed.steered.test" not in never.tick(1001.0)


def test_network_labels_on_pseudonyms() -> None:
    assert client_network(label_client("dorms", PSEUDO)) == "dorms"
    assert client_network(label_client("", PSEUDO)) == "" and client_network("10.1.2.3") == ""
    assert client_network("a/b/" + PSEUDO) == "a/b" and client_network("x/" + PSEUDO.upper()) == ""
    # a network that could single out a few people labels nothing; neither does a name with "/"
    assert labelled_networks(["dorms=10.1.0.0/16|10.9.0.0/24", "dean=10.5.0.7/32", "a/b=10.6.0.0/16",
                              "v6=2001:db8::/64"]) == ("dorms=10.1.0.0/16|10.9.0.0/24", "v6=2001:db8::/64")


def test_bypass_per_network_with_pseudonyms(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path, console_networks=("dorms=10.1.0.0/16",))
    watch = BypassWatch(settings, steered_index().is_steered, Counter())
    watch.on_events([request("steered.test", label_client("dorms", PSEUDO), 100.0),
                     request("steered.test", PSEUDO, 100.0)])
    fields = watch.tick(101.0)
    assert fields["bypassed.steered.test@dorms"] == 1 and fields["bypassed.steered.test@other"] == 1


def test_a_trial_counts_only_clients_known_to_be_in_it(tmp_path: Path) -> None:
    counters: Counter[str] = Counter()
    settings = load_settings(state_dir=tmp_path, dns_steer_networks=("10.1.0.0/16",),
                             console_networks=("trial=10.1.4.0/24", "dorms=10.1.0.0/8", "lib=10.2.0.0/16"))
    watch = BypassWatch(settings, steered_index().is_steered, counters)
    watch.on_events([request("steered.test", label_client("trial", PSEUDO), 100.0),  # steered: counted
                     request("steered.test", label_client("lib", PSEUDO), 100.0),  # never steered
                     request("steered.test", label_client("dorms", PSEUDO), 100.0),  # partly in: can't tell
                     request("steered.test", PSEUDO, 100.0)])  # no label: can't tell
    fields = watch.tick(101.0)
    assert fields["bypassed.steered.test"] == 1 and fields["bypassed.steered.test@trial"] == 1
    assert counters["bypass.unattributable"] == 2
    raw = BypassWatch(settings.model_copy(update={"client_id_raw": True}), steered_index().is_steered, Counter())
    raw.on_events([request("steered.test", "10.1.9.9", 100.0), request("steered.test", "10.2.0.1", 100.0)])
    assert raw.tick(101.0)["bypassed.steered.test"] == 1


def test_the_edge_counts_only_hosts_it_steers() -> None:
    index = steered_index()
    index.apply(CacheEvent("http://alt.test:8081/a", "cached", path="objects/00/b"))
    index.apply(CacheEvent("https://tls.test/a", "cached", path="objects/00/c"))
    ports: tuple[list[int], list[int]] = ([80, 8080], [])
    steers = edge_steers(index, ["never.test"], lambda: ports)
    assert steers("steered.test") and not steers("alt.test") and not steers("tls.test")
    ports = ([80, 8081], [443])
    assert steers("alt.test") and steers("tls.test") and not steers("elsewhere.test")
    index.apply(CacheEvent("http://never.test/a", "cached", path="objects/00/d"))
    assert not steers("never.test")
    assert edge_steers(index, [], lambda: ([], []))("alt.test")  # no ports reported: not checked (as the DNS)
