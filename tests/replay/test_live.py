"""Integration: a trace imported into `requests` on the real broker is replayed from the topic
(`heatcache replay --from/--to`), and `--shadow` runs a real `heatcache streams` worker on a
prefixed copy of the range: the HotUrls it emits equal the ones replay simulated."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from cachestore.tracegen import TraceParams
from heatcache import contract
from heatcache.cli import main
from heatcache.settings import Settings
from replay.gen import make_trace
from replay.kafkaio import publish_trace


def test_replay_from_the_topic_and_shadow_worker_agree(kafka_settings: Settings, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    s = kafka_settings
    params = TraceParams(requests=1500, objects=300, one_timer_share=0.3, duration_s=6 * 3600.0, seed=4)
    trace = make_trace(params, clients=60, seed=4)
    report = publish_trace(trace, s.kafka_bootstrap, s.topic(contract.REQUESTS), max_events=40, linger_s=60.0)
    assert report.errors == 0 and report.events == 1500
    for name, value in (("KAFKA_BOOTSTRAP", s.kafka_bootstrap), ("TOPIC_PREFIX", s.topic_prefix),
                        ("STATE_DIR", str(tmp_path / "state")), ("CLIENT_ID_SECRET", "test-secret")):
        monkeypatch.setenv("HEATCACHE_" + name, value)
    start, end = trace.events[0].ts, trace.events[-1].ts + 1
    out = tmp_path / "report"
    code = main(["replay", "--from", str(start), "--to", str(end), "--windows", "3600", "--min-clients", "2",
                 "--jobs", "1", "--no-baselines", "--shadow", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    body = orjson.loads((out / "replay.json").read_bytes())
    row = body["rows"][0]
    assert row["requests"] == 1500 and row["bytes_requested"] == sum(trace.sizes)  # sizes came with the import
    assert row["net_savings"] > 0 and row["prefetches"] >= 1
    shadow_line = next(line for line in text.splitlines() if line.startswith("shadow ("))
    assert shadow_line.endswith(": identical"), text
    emitted = int(shadow_line.split("worker emitted ")[1].split()[0])
    assert emitted > 20


def test_a_shadow_worker_that_does_not_catch_up_says_why(kafka_settings: Settings, tmp_path: Path) -> None:
    """Out of time, --shadow names what the worker had left and shows its log (a partial output
    compared with replay's would only say "differ")."""
    from replay.engine import Setting
    from replay.shadow import shadow
    from replay.trace import batches

    s = kafka_settings.model_copy(update={"state_dir": tmp_path / "state"})
    trace = make_trace(TraceParams(requests=50, objects=20, duration_s=600.0, seed=1), clients=5, seed=1)
    with pytest.raises(TimeoutError, match=r"did not commit the copy in 0 s \((not ready|lag unknown|uncommitted"
                                           r" per partition \{.+\})\); its last log lines:\n") as exc:
        shadow(list(batches(trace, s.kafka_partitions)), Setting(window_s=3600), s, timeout=0)
    assert str(exc.value).rstrip().splitlines()[-1]  # a log line, or "(none yet)"
