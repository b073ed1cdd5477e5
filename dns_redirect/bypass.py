"""Leak detection on the edge: follow `requests`, count what bypassed the steering, publish it.

The sniffer's events for a host that the edge steers are requests that went to an origin
address (the sniffer never publishes the node's own traffic: HEATCACHE_NODE_ADDRESS/_ADDRESS6/
OUTBOUND_ADDRESS are always ignored, besides HEATCACHE_IGNORE_ADDRESSES), so they bypassed the
cache node. The edge follows the `control` topic like the DNS: while steering is stopped no
request is a bypass.
The edge knows both halves of the ratio: those events (read from `requests`, a metric-only
follower that starts at the end and never commits) and what it served itself (HTTP hits and
misses, TLS connections). The pure part is heatcache.bypass; this is the I/O around it.

Published: per host on the `metrics` topic as the ``edge-top`` record (``bypass_ratio.<host>``,
``bypassed.<host>``, ``served.<host>``, ``bypassed.<host>@<network>``: host names are data, so
they are not in the stage's fixed field set), and in the declared metrics as the highest ratio
and the number of hosts above ``HEATCACHE_BYPASS_ALERT_RATIO`` (what an alert can use).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from confluent_kafka import OFFSET_END, Consumer, Message, TopicPartition

from dns_redirect.index import CacheIndex
from dns_redirect.policy import never_steer
from dns_redirect.ports import ports_served
from heatcache import contract
from heatcache.bypass import BypassMeter, SteeringSwitch, high_bypass, max_ratio, record_fields
from heatcache.cachekey import key_host
from heatcache.contract import RequestBatch, RequestEvent
from heatcache.kafkautil import Follower
from heatcache.networks import NetworkNamer, client_network, networks_within, parse_named_networks
from heatcache.settings import Settings

log = logging.getLogger(__name__)

RECORD = "edge-top"  # the `metrics` record with the per-host figures ("-top": not a stage of its own)


class RequestsFollower(Follower):
    """Reads `requests` from its end on every partition (kafkautil.Follower, starting at the end:
    no group offsets, after a restart or a lost broker the window starts afresh, which a ratio
    over minutes tolerates) and hands each batch's events to ``deliver`` on ``loop``.
    Undecodable batches are counted, not dead-lettered (streams, the topic's real consumer,
    dead-letters them once already). ``ready``: following from the end of every partition."""

    def __init__(self, bootstrap: str, topic: str, loop: asyncio.AbstractEventLoop,
                 deliver: Callable[[tuple[RequestEvent, ...]], None], counters: Counter[str],
                 config: Mapping[str, Any] | None = None) -> None:
        super().__init__(bootstrap, [topic], name="bypass-requests", group_prefix="heatcache-bypass", batch=500,
                         config=config, require_topics=True)
        self.topic = topic
        self.loop = loop
        self.deliver = deliver
        self.counters = counters

    def starts(self, consumer: Consumer, parts: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, OFFSET_END) for tp in parts]

    def on_caught_up(self) -> None:
        if not self.ready.is_set():
            log.info("bypass: following %s from its end", self.topic)
        super().on_caught_up()

    def handle(self, msgs: list[Message], caught_up: bool) -> None:
        events: list[RequestEvent] = []
        for msg in msgs:
            try:
                events.extend(contract.decode(msg.value(), RequestBatch).events)
            except Exception:  # whatever a record holds, the follower goes on
                self.counters["bypass.bad-batches"] += 1
        if events:
            try:
                self.loop.call_soon_threadsafe(self.deliver, tuple(events))
            except RuntimeError:  # the loop is closed: we are stopping
                self.stop()


def edge_steers(index: CacheIndex, never: Iterable[str], ports: Callable[[], tuple[list[int], list[int]]]
                ) -> Callable[[str], bool]:
    """Whether the DNS steers ``host`` to this edge, as far as the edge knows: cached here, not
    never-steered, and every (scheme, port) of its keys served (``ports()``: the client ports
    the edge reports, HTTP and TLS; no HTTP ports reported = not checked, like the DNS)."""
    never = tuple(never)

    def steers(host: str) -> bool:
        if not index.is_steered(host) or never_steer(host, never):
            return False
        http, tls = ports()
        return not http or ports_served(index.ports_of(host), http, tls)

    return steers


class BypassWatch:
    """Everything on the edge's loop: counts bypassed events of steered hosts, collects what the
    edge served, and turns both into figures every ``tick``.

    A sniffer event is a bypass only if the client was steered when it was captured: its host
    is steered by this edge (``is_steered``: cached here, not never-steered, every port of its
    keys served), steering was on (the `control` kill switch and HEATCACHE_DNS_STEERING, as the
    DNS follows them: :meth:`on_control`) and, with a trial limited to some client networks
    (HEATCACHE_DNS_STEER_NETWORKS), the client is known to be in one of them."""

    def __init__(self, settings: Settings, is_steered: Callable[[str], bool], counters: Counter[str]) -> None:
        self.settings = settings
        self.is_steered = is_steered
        self.counters = counters
        self.meter = BypassMeter(settings.bypass_window_s)
        self.namer = NetworkNamer(settings.console_networks)
        labels = settings.client_id_network and not settings.client_id_raw and bool(self.namer)
        # an id without a network: a raw address in no named network, or (with labels) a
        # pseudonym in none; without labels nothing can be said of a pseudonym
        self.unnamed = "other" if settings.client_id_raw or labels else "pseudonymous"
        self.switch = SteeringSwitch(grace_s=settings.dns_ttl, keep_s=2 * settings.bypass_window_s,
                                     always_off=not settings.dns_steering)
        self.trial = tuple(ipaddress.ip_network(n, strict=False) for n in settings.dns_steer_networks)
        named = parse_named_networks(settings.console_networks)
        # named networks wholly inside the trial: their labelled clients were steered
        self.trial_names = frozenset(n for n, nets in named.items() if networks_within(nets, self.trial))
        # ... and those wholly outside it: their clients were never steered
        self.outside_names = frozenset(n for n, nets in named.items()
                                       if not any(a.overlaps(b) for a in nets for b in self.trial  # type: ignore[arg-type]
                                                  if a.version == b.version))
        self.high: set[str] = set()
        self._tls_seen: dict[str, int] = {}
        self.last: dict[str, Any] = {}

    def network(self, client: str) -> str:
        """The client's named network: a raw address's, or the label of a pseudonym
        (HEATCACHE_CLIENT_ID_NETWORK); "other" / "pseudonymous" when there is none."""
        if self.settings.client_id_raw:
            return self.namer.name(client) or self.unnamed
        return client_network(client) or self.unnamed

    def steered_client(self, client: str) -> bool | None:
        """Whether steering applied to ``client`` (a trial on some networks only); None: cannot
        tell (a pseudonym without a label, or a network not wholly in the trial)."""
        if not self.trial:
            return True
        if self.settings.client_id_raw:
            try:
                ip = ipaddress.ip_address(client)
            except ValueError:
                return None
            return any(ip in net for net in self.trial)
        label = client_network(client)
        if label in self.trial_names:
            return True
        return False if label in self.outside_names else None

    def on_control(self, stopped: bool, ts: float) -> None:
        """The kill switch (`control` topic) moved at ``ts``: requests captured while steering is
        stopped, and for a TTL after it starts again, are no bypass."""
        before = self.switch.stopped
        self.switch.set(stopped, ts)
        if self.switch.stopped != before:
            log.info("bypass: steering %s: requests from %.0f on %s", "stopped" if stopped else "running",
                     ts, "are not counted" if stopped else "count again after one TTL")

    def on_events(self, events: Iterable[RequestEvent]) -> None:
        meter, steered, switch, counters = self.meter, self.is_steered, self.switch, self.counters
        for ev in events:
            # the key's host: the event's host is the Host header as sent (with a port off 80)
            host = key_host(ev.cache_key).lower().rstrip(".")
            if not steered(host):
                continue
            if not switch.steered_at(ev.ts):
                counters["bypass.steering-off"] += 1
                continue
            who = self.steered_client(ev.client)
            if who is None:
                counters["bypass.unattributable"] += 1  # a trial, and no way to tell this client's network
                continue
            if who:
                meter.bypassed(host, self.network(ev.client), ev.ts)
                counters["bypass.requests"] += 1

    def collect(self, now: float, served_keys: Counter[str], served_hosts: Counter[str],
                tls_hosts: dict[str, dict[str, int]] | None) -> None:
        """Fold what the edge served since the last call (the edge's counters are emptied)."""
        for key, n in served_keys.items():
            self.meter.served(key_host(key), now, n)
        served_keys.clear()
        for host, n in served_hosts.items():
            self.meter.served(host.lower().rstrip("."), now, n)
        served_hosts.clear()
        for host, fig in (tls_hosts or {}).items():  # cumulative per host: take the increase
            total = fig.get("connections", 0)
            new = total - self._tls_seen.get(host, 0)
            self._tls_seen[host] = total
            if new > 0:
                self.meter.served(host, now, new)

    def tick(self, now: float) -> dict[str, Any]:
        """The figures as of ``now``: updates the declared gauges, warns once per host going high,
        returns the ``edge-top`` record's fields."""
        s = self.settings
        figures = self.meter.figures(now)
        high = set(high_bypass(figures, s.bypass_alert_ratio, s.bypass_min_requests))
        for host in sorted(high - self.high):
            f = figures[host]
            log.warning("steering bypass: %s %.0f%% of %d requests went around the cache node (by network: %s)",
                        host, 100 * (f.ratio or 0), f.bypassed + f.served, f.networks)
        self.high = high
        self.counters["bypass.max-ratio"] = max_ratio(figures, s.bypass_min_requests)  # type: ignore[assignment]
        self.counters["bypass.high-hosts"] = len(high)
        self.last = record_fields(figures)
        self.last["steering_stopped"] = int(self.switch.stopped)  # the kill switch as the edge follows it
        return self.last
