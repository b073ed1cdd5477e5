"""`heatcache sniff` on a capture file (sniffer/app.py with HEATCACHE_SNIFF_PCAP): the whole
loop, batches of frames through the parser (compiled fast path or Python reference) into a real
Kafka topic; what is published is what the capture holds."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from heatcache import contract
from heatcache.contract import RequestBatch
from heatcache.kafkautil import read_topic
from heatcache.lifecycle import StopFlag
from heatcache.settings import Settings
from sniffer.app import Sniffer
from sniffer.synth import generate


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "reference"])
def test_sniffer_publishes_a_capture_file(kafka_settings: Settings, tmp_path: Path, compiled: bool) -> None:
    traffic = generate(3_000, seed=23)
    pcap = tmp_path / "campus.pcap"
    traffic.write_pcap(pcap)
    settings = kafka_settings.model_copy(update={"sniff_pcap": pcap, "sniff_compiled": compiled,
                                                 "batch_linger_ms": 20})
    sniffer = Sniffer(settings, settings.kafka_bootstrap)
    assert sniffer.parser.compiled is compiled
    counters = sniffer.run(StopFlag())  # returns once the file is read and the batches are flushed
    events = [e for m in read_topic(settings.kafka_bootstrap, settings.topic(contract.REQUESTS))
              for e in contract.decode(m.value(), RequestBatch).events]
    want = [r for r in traffic.requests if r[0] in ("GET", "HEAD")]
    http = [e for e in events if e.method != "TLS"]
    assert Counter((e.method, e.path) for e in http) == Counter((m, uri) for m, _host, uri in want)
    assert sorted(e.host for e in events if e.method == "TLS") == sorted(traffic.tls_hosts)
    assert counters["requests"] == len(want) and counters["packets"] == len(traffic.frames)
    assert counters["published"] == len(events)
