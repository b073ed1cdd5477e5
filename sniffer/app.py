"""The sniffer's I/O shell: capture frames, parse them, publish batches, report counters."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator

from confluent_kafka import KafkaError

from heatcache import contract
from heatcache.cachekey import KeyRules
from heatcache.contract import RequestEvent
from heatcache.kafkautil import admin, producer
from heatcache.lifecycle import StopFlag, announce_ready
from heatcache.runner import Runner
from heatcache.settings import Settings
from sniffer.capture import LiveCapture, pcap_event_batches
from sniffer.events import ClientHasher, Filters, FrameParser, compiled_available
from sniffer.publish import BatchPublisher

log = logging.getLogger(__name__)


def topic_partitions(bootstrap: str, topic: str, settings: Settings | None = None) -> int:
    md = admin(bootstrap, settings).list_topics(topic, timeout=30)
    meta = md.topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        raise RuntimeError(f"topic {topic} is missing: create it first (heatcache up does)")
    return len(meta.partitions)


def build_parser(settings: Settings, counters: Counter[str] | None = None) -> FrameParser:
    """The pure frame -> event mapping, configured from settings."""
    compiled = settings.sniff_compiled and compiled_available()
    if settings.sniff_compiled and not compiled:  # said out loud: the reference is ~5x slower
        log.warning("sniffer._fastpath is not built: using the pure-Python reference path")
    return FrameParser(
        ports=frozenset(settings.sniff_ports),
        rules=KeyRules.load(settings.cache_key_rules),
        hasher=ClientHasher.from_settings(settings),
        counters=counters if counters is not None else Counter(),
        tls_ports=frozenset(settings.sniff_tls_ports),
        # the node's own addresses always: its clients are counted by the edge, its origin traffic is
        # no demand (and a request the sniffer saw for a steered host would count as a bypass)
        filters=Filters(frozenset(settings.ignore_addresses) | settings.node_addresses, settings.ignore_hosts,
                        settings.ignore_paths),
        compiled=compiled,
    )


class Sniffer:
    """Reads one source (interface or pcap) until stopped, publishing RequestEvent batches."""

    EXPIRE_EVERY_S = 10.0

    def __init__(self, settings: Settings, bootstrap: str, counters: Counter[str] | None = None,
                 error_cb: Callable[[KafkaError], None] | None = None) -> None:
        self.settings = settings
        self.counters: Counter[str] = Counter() if counters is None else counters
        self.parser = build_parser(settings, self.counters)
        topic = settings.topic(contract.REQUESTS)
        extra: dict[str, object] = {"linger.ms": settings.batch_linger_ms}
        if error_cb is not None:  # the runner's: a lost broker shows as degraded health
            extra["error_cb"] = error_cb
        self.producer = producer(bootstrap, settings, **extra)
        self.publisher = BatchPublisher(self.producer, topic, topic_partitions(bootstrap, topic, settings),
                                        settings.batch_max_events, settings.batch_linger_ms / 1000, self.counters)

    def run(self, stop: StopFlag, ready: Callable[[], None] | None = None) -> Counter[str]:
        """Publish until the source ends or ``stop``; metrics come from the runner (heatcache sniff)."""
        s = self.settings
        last_metrics = time.monotonic()
        capture: LiveCapture | None = None
        batches: Iterator[tuple[list[RequestEvent], float | None]]
        if s.sniff_pcap is not None:
            # thousands of frames per call into the parser (one C call on the compiled path)
            batches = pcap_event_batches(s.sniff_pcap, self.parser)
            log.info("reading %s", s.sniff_pcap)
        else:
            capture = LiveCapture(s.sniff_iface, s.sniff_ports, s.sniff_outgoing, s.sniff_tls_ports, s.sniff_netns)
            parser = self.parser
            # (events of a block of frames, time of its last); ([], None) on idle: the publisher still ticks
            batches = ((parser.events_many(b), b[-1][1]) if b else ([], None) for b in capture.batches(stop))
            log.info("capturing on %s, ports %s", s.sniff_iface, ",".join(map(str, s.sniff_ports)))
        (ready or (lambda: announce_ready("sniffer")))()
        ts = 0.0
        try:
            for events, last in batches:
                if last is not None:
                    ts = last
                for event in events:
                    self.publisher.add(event)
                self.publisher.tick()
                now = time.monotonic()
                if now - last_metrics >= self.EXPIRE_EVERY_S:
                    last_metrics = now
                    self.parser.expire(time.time() if capture is not None else ts)
                    if capture is not None:
                        self.counters["kernel-drops"] += capture.kernel_drops()
                if stop.is_set():
                    break
        finally:
            self.parser.flush()
            if capture is not None:
                self.counters["kernel-drops"] += capture.kernel_drops()
                capture.close()
            left = self.publisher.flush()
            self.producer.flush(10)
            if left:
                log.error("%d batches not delivered at shutdown", left)
            log.info("sniffer stopped: %s", dict(self.counters))
        return self.counters


def main(run: Runner) -> None:
    """``heatcache sniff`` on the stage runner."""
    Sniffer(run.settings, run.bootstrap, run.counters, run.kafka_error_cb).run(run.stop, run.ready)
