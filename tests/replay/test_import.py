"""`heatcache trace import` round trip on a real Kafka: every format goes into `requests` with
its original times and comes back by time range (offsets_for_times) as the same events."""

from __future__ import annotations

from pathlib import Path

from heatcache import contract
from heatcache.cli import main
from heatcache.settings import Settings
from replay.kafkaio import read_range, trace_of
from replay.trace import read_file
from sniffer.synth import generate
from tests.replay import samples


def test_every_format_round_trips_through_requests(kafka_settings: Settings, tmp_path: Path,
                                                     monkeypatch: object, capsys: object) -> None:
    import pytest

    mp: pytest.MonkeyPatch = monkeypatch  # type: ignore[assignment]
    for name, value in (("KAFKA_BOOTSTRAP", kafka_settings.kafka_bootstrap),
                        ("TOPIC_PREFIX", kafka_settings.topic_prefix), ("STATE_DIR", str(tmp_path / "state")),
                        ("CLIENT_ID_SECRET", kafka_settings.client_id_secret.get_secret_value())):
        mp.setenv("HEATCACHE_" + name, value)
    topic = kafka_settings.topic(contract.REQUESTS)
    files = {}
    for i, fmt in enumerate(("clf", "squid", "jsonl", "csv")):
        files[fmt] = (samples.write(fmt, tmp_path / f"log-{fmt}.txt", offset=1000.0 * i), 1000.0 * i)
    pcap = tmp_path / "campus.pcap"
    generate(300, seed=5).write_pcap(pcap, start_ts=1_790_010_000.0, step=0.01)
    for fmt, (path, _off) in files.items():
        assert main(["trace", "import", str(path), "--format", fmt]) == 0
        out = capsys.readouterr().out  # type: ignore[attr-defined]
        assert "4 requests" in out and "bad lines: " + ", ".join(
            f"{k}={v}" for k, v in sorted(samples.BAD[fmt][1].items())) in out
    assert main(["trace", "import", str(pcap)]) == 0
    assert "as pcap" in capsys.readouterr().out  # type: ignore[attr-defined]

    base = samples.REQUESTS[0][0]
    for fmt, (path, off) in files.items():
        batches = read_range(kafka_settings.kafka_bootstrap, topic, base + off, base + off + 10)
        got = trace_of(batches)
        want, _ = read_file(path, kafka_settings, fmt)
        assert got.events == want.events, fmt
        assert got.sizes == want.sizes and got.statuses == want.statuses
    # the capture: the sniffer's own parser, same events whether read from the topic or the file
    got = trace_of(read_range(kafka_settings.kafka_bootstrap, topic, 1_790_010_000.0, None))
    want, _ = read_file(pcap, kafka_settings)
    assert len(want) > 200 and sorted(got.events) == sorted(want.events)  # same-time events: any order
    # a range that holds nothing
    assert read_range(kafka_settings.kafka_bootstrap, topic, 1_700_000_000.0, 1_700_000_100.0) == []
