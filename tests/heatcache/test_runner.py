"""The stage runner (heatcache/runner.py): exit statuses, stop deadline, /metrics and /health,
the `metrics` snapshots and the consumer loop's error policy on a real broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Message, TopicPartition

from heatcache import contract
from heatcache.contract import HotUrl
from heatcache.kafkautil import consumer, producer, read_topic
from heatcache.lifecycle import READY_MARK
from heatcache.metrics import StageSpec, consumer_metrics, counter
from heatcache.netutil import free_port
from heatcache.runner import EX_CONFIG, ConfigError, ConsumerLoop, Output, Retry, Runner
from heatcache.settings import Settings

SPEC = StageSpec("demo", (counter("heatcache_demo_seen_total", "messages seen", "seen"), *consumer_metrics("demo")))


def test_config_error_has_its_own_exit_status(base_settings: Settings) -> None:
    def main(_run: Runner) -> None:
        raise ConfigError("HEATCACHE_X is wrong")

    def boom(_run: Runner) -> None:
        raise OSError("crash")

    assert Runner(base_settings, SPEC, bootstrap="").run(main, install_signals=False) == EX_CONFIG
    assert Runner(base_settings, SPEC, bootstrap="").run(boom, install_signals=False) == 1
    assert Runner(base_settings, SPEC, bootstrap="").run(lambda r: None, install_signals=False) == 0


def test_metrics_and_health_are_served(base_settings: Settings) -> None:
    port = free_port()
    run = Runner(base_settings.model_copy(update={"metrics_port": port, "metrics_bind": "127.0.0.1"}), SPEC,
                 bootstrap="")
    seen: dict[str, object] = {}

    def main(r: Runner) -> None:
        r.counters["seen"] += 2
        r.ready()
        seen["metrics"] = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        seen["ok"] = orjson.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).read())
        r.health.degraded("broker", "gone")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
        seen["degraded"] = (err.value.code, orjson.loads(err.value.read()))
        err.value.close()

    assert run.run(main, install_signals=False) == 0
    text = str(seen["metrics"])
    assert "heatcache_demo_seen_total 2.0" in text and "heatcache_demo_healthy 1.0" in text
    assert seen["ok"] == {"stage": "demo", "ready": True, "health": "ok", "reason": ""}
    assert seen["degraded"] == (503, {"stage": "demo", "ready": True, "health": "degraded", "reason": "broker: gone"})


STUCK = textwrap.dedent("""
    import sys, time
    from heatcache.metrics import StageSpec
    from heatcache.runner import Runner
    from heatcache.settings import load_settings

    def main(run):
        run.ready()
        while True:          # ignores the stop flag: long work the deadline must interrupt
            time.sleep(3600)

    sys.exit(Runner(load_settings(), StageSpec("stuck", ())).run(main))
""")
STUCK_ASYNC = textwrap.dedent("""
    import asyncio, sys
    from heatcache.metrics import StageSpec
    from heatcache.runner import Runner
    from heatcache.settings import load_settings

    async def main(run):
        run.ready()
        while True:          # ignores run.stopped(): the deadline must cancel the main task
            await asyncio.sleep(3600)

    sys.exit(Runner(load_settings(), StageSpec("stuck", ())).run_async(main))
""")


@pytest.mark.parametrize("script", [STUCK, STUCK_ASYNC], ids=["sync", "async"])
def test_sigterm_interrupts_long_work_at_the_deadline(script: str, tmp_path: Path) -> None:
    env = {**os.environ, "HEATCACHE_STOP_DEADLINE_S": "0.5", "HEATCACHE_STATE_DIR": str(tmp_path),
           "HEATCACHE_KAFKA_BOOTSTRAP": ""}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        if READY_MARK in line:
            break
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rest = proc.stderr.read()
    assert proc.wait(30) == 1
    proc.stderr.close()
    assert time.monotonic() - started < 20  # far below the 30 s an orchestrator waits before SIGKILL
    assert "did not stop within" in rest


def _hot(n: int) -> bytes:
    url = f"http://origin.example/{n}"
    return contract.encode(HotUrl(url, url, "origin.example", 2, 2, 60, 1.0))


def test_consumer_loop_dead_letters_poison_and_goes_on(kafka_settings: Settings) -> None:
    s = kafka_settings
    bootstrap = s.kafka_bootstrap
    topic, out_topic = s.topic(contract.HOT_URLS), s.topic(contract.CACHE_EVENTS)
    prod = producer(bootstrap)
    poison = [b"not json", _hot(1).replace(b'"cache_key":"http://origin.example/1"', b'"cache_key":123'),
              _hot(1).replace(b'"heat":2', b'"heat":true')]
    for raw in [_hot(0), *poison, _hot(2), _hot(3)]:
        prod.produce(topic, key=b"k", value=raw, partition=0)
    prod.flush(10)
    run = Runner(s.model_copy(update={"metrics_interval_s": 0.2}), SPEC)
    handled: list[str] = []
    flaky = {"left": 2}

    def handle(msg: Message) -> list[Output]:
        hot = contract.decode(msg.value(), HotUrl)
        if hot.url.endswith("/2") and flaky["left"]:
            flaky["left"] -= 1
            raise Retry("catalog", "database is down")  # back-off, the same message again
        if hot.url.endswith("/3"):
            raise RuntimeError("handler bug")
        handled.append(hot.url)
        run.counters["seen"] += 1
        return [Output(out_topic, hot.cache_key.encode(), b"{}")]

    group = s.topic_prefix + "loop-test"

    def main(r: Runner) -> None:
        loop = ConsumerLoop(r, consumer(bootstrap, group), producer(bootstrap), handle, backoff=(0.05, 0.1))
        loop.subscribe([topic])
        r.ready()
        done = threading.Thread(target=_stop_when, args=(r, lambda: r.counters["msg.dead-letter"] >= 4), daemon=True)
        done.start()
        try:
            loop.loop(poll_s=0.1)
        finally:
            loop.consumer.close()

    assert run.run(main, install_signals=False) == 0
    assert handled == ["http://origin.example/0", "http://origin.example/2"]
    assert run.counters["msg.retried"] == 2
    dead = [orjson.loads(m.value()) for m in read_topic(bootstrap, s.topic(contract.DEAD_LETTER))]
    assert [d["offset"] for d in dead] == [1, 2, 3, 5]
    assert "not JSON" in dead[0]["reason"] and "cache_key: must be a string" in dead[1]["reason"]
    assert "heat: must be an integer" in dead[2]["reason"] and "RuntimeError: handler bug" in dead[3]["reason"]
    assert len(read_topic(bootstrap, out_topic)) == 2
    # every message's offset was committed: a restarted group sees nothing left
    again = consumer(bootstrap, group)
    try:
        committed = again.committed([TopicPartition(topic, 0)], timeout=10)
        assert committed[0].offset == 6
    finally:
        again.close()
    snaps = [orjson.loads(m.value()) for m in read_topic(bootstrap, s.topic(contract.METRICS))]
    assert snaps and all(list(x) == list(snaps[0]) for x in snaps)
    assert snaps[-1]["stage"] == "demo" and snaps[-1]["messages_total__dead_letter"] == 4
    assert snaps[-1]["seen_total"] == 2 and snaps[-1]["health"] == "ok"


def _stop_when(run: Runner, cond: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.05)
    run.stop.set()
