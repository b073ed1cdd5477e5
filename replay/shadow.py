"""``heatcache replay --shadow``: the Kafka-native trial of a setting.

The time range is re-published (same partitions, same timestamps) to a prefixed copy of the
topics, a real ``heatcache streams`` worker runs on that copy with the candidate settings and no
fetcher, and the HotUrls it emits are compared with the ones replay simulates for the same
settings (prefetch and fill off in the simulation too: with no fetcher nothing gets cached).
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

from heatcache import contract
from heatcache.contract import HotUrl, RequestBatch
from heatcache.kafkautil import client_config, producer, read_topic
from heatcache.settings import Settings
from replay.engine import Setting, StreamsAdmission, prepare, run
from streams.rules import rules_from_settings


@dataclass
class ShadowReport:
    prefix: str
    simulated: list[tuple[str, float]] = field(default_factory=list)
    emitted: list[tuple[str, float]] = field(default_factory=list)
    worker_log: str = ""  # the worker's last lines (shown when the two differ)

    @property
    def only_simulated(self) -> list[tuple[str, float]]:
        return sorted(set(self.simulated) - set(self.emitted))

    @property
    def only_emitted(self) -> list[tuple[str, float]]:
        return sorted(set(self.emitted) - set(self.simulated))

    @property
    def identical(self) -> bool:
        return sorted(self.simulated) == sorted(self.emitted)

    def summary(self) -> str:
        verdict = "identical" if self.identical else (
            f"DIFFER: {len(self.only_simulated)} only simulated, {len(self.only_emitted)} only from the worker")
        return (f"shadow ({self.prefix}*): worker emitted {len(self.emitted)} HotUrls, replay simulated "
                f"{len(self.simulated)}: {verdict}")


def republish(batches: list[RequestBatch], bootstrap: str, topic: str, settings: Settings | None = None) -> None:
    prod = producer(bootstrap, settings)
    for b in batches:
        prod.produce(topic, key=str(b.bucket).encode(), partition=b.bucket, value=contract.encode(b),
                     timestamp=int(b.events[0].ts * 1000))
        prod.poll(0)
    if prod.flush(60):
        raise RuntimeError("shadow: re-publishing the range did not complete")


def lag(bootstrap: str, topic: str, group: str, settings: Settings | None = None) -> dict[int, int] | None:
    """Messages of ``topic`` that ``group`` has not committed yet, per partition that has any
    ({}: caught up; None: not known, the broker did not answer)."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    cons = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                     **client_config(settings)})
    try:
        parts = [TopicPartition(topic, p) for p in cons.list_topics(topic, timeout=10).topics[topic].partitions]
        committed = {tp.partition: tp.offset for tp in cons.committed(parts, timeout=10)}
        behind = {}
        for tp in parts:
            _low, high = cons.get_watermark_offsets(tp, timeout=10)
            done = max(0, committed.get(tp.partition, -1))  # -1001: nothing committed yet
            if high > done:
                behind[tp.partition] = high - done
        return behind
    except KafkaException:  # a slow broker (or a group still rebalancing): not known yet, ask again
        return None
    finally:
        cons.close()


def caught_up(bootstrap: str, topic: str, group: str, settings: Settings | None = None) -> bool:
    """Whether ``group`` has committed the end of every partition of ``topic``."""
    return lag(bootstrap, topic, group, settings) == {}


def shadow(batches: list[RequestBatch], setting: Setting, base: Settings, timeout: float = 240.0) -> ShadowReport:
    """Run the worker on a copy of ``batches`` under ``setting``; compare its HotUrls with replay's.

    A worker that has not committed the whole copy within ``timeout`` seconds raises
    TimeoutError with what it still had to commit and its last log lines (comparing a partial
    output would only say "differ")."""
    from heatcache.services.kafka import ensure_topics
    from heatcache.stack import StageProcess, settings_env

    prefix = f"{base.topic_prefix}shadow-{uuid.uuid4().hex[:8]}-"
    live = replace(setting, prefetch=False, fill=False)
    settings = live.settings(base).model_copy(update={"topic_prefix": prefix, "heat_flush_interval_s": 0.2})
    bootstrap = settings.kafka_bootstrap
    ensure_topics(bootstrap, settings)
    republish(batches, bootstrap, settings.topic(contract.REQUESTS), settings)
    admission = StreamsAdmission(rules_from_settings(settings))
    run(prepare(batches), live, settings, admission=admission)
    report = ShadowReport(prefix, simulated=list(admission.emitted))
    with tempfile.TemporaryDirectory() as tmp:
        proc = StageProcess("streams", {**os.environ, **settings_env(settings)}, Path(tmp), None)
        try:
            deadline = time.monotonic() + timeout
            group = settings.topic_prefix + settings.app_id  # the Faust app's consumer group
            behind: dict[int, int] | None = None
            while True:
                if proc.proc.poll() is not None:
                    raise RuntimeError("shadow: the streams worker exited:\n" + _tail(proc.log_path, 2000))
                # done when the worker has committed every message of the copy (it commits only
                # after what a message produced was sent), then read what it emitted
                if proc.ready.is_set():
                    behind = lag(bootstrap, settings.topic(contract.REQUESTS), group, settings)
                    if behind == {}:
                        break
                if time.monotonic() >= deadline:
                    state = ("not ready" if not proc.ready.is_set() else
                             "lag unknown" if behind is None else f"uncommitted per partition {behind}")
                    raise TimeoutError(f"shadow: the streams worker did not commit the copy in {timeout:g} s "
                                       f"({state}); its last log lines:\n{_tail(proc.log_path, 3000) or '(none yet)'}")
                time.sleep(0.5)
            emitted = [contract.decode(m.value(), HotUrl)
                       for m in read_topic(bootstrap, settings.topic(contract.HOT_URLS), timeout=10, settings=settings)]
            report.emitted = [(h.cache_key, h.ts) for h in emitted]
        finally:
            proc.stop(20)
            report.worker_log = _tail(proc.log_path, 3000)
    return report


def _tail(path: Path, chars: int) -> str:
    """The end of the worker's log ("" before it has written one)."""
    try:
        return path.read_text(errors="replace")[-chars:]
    except FileNotFoundError:
        return ""
