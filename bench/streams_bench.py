"""bench/streams: `heatcache streams` against a bare confluent-kafka loop on the same topic.

One embedded Kafka broker; one `requests` topic pre-produced with RequestBatch messages as the
sniffer writes them (batches of 100 events, Zipf over the keys, uniform clients, one bucket per
partition). Then, in the same run:

- warm-up (untimed): one read of the topic, and with the full run one streams run, so that no
  figure pays for the broker's cold start (the first run was up to 3x slower than the same
  run later);
- bare: a confluent-kafka consumer decoding every batch with heatcache.contract and keeping a
  set of clients per key (no state durability, no rules): the reference;
- streams: `heatcache streams` started as a user starts it (the CLI, settings from the
  environment), events/s from its first offset commit to its last (offsets only cover state that
  is durable in the Faust table and its changelog);
- rocksdb: the same with HEATCACHE_HEAT_STORE=rocksdb (not with --quick);
- two workers (not with --quick): two `heatcache streams` in one group on a copy of the topic produced once both
  are up; events/s from first to last commit and CPU-seconds per event of each worker; their
  HotUrls must be the one worker's (same admission ids).

Last line: ``streams: ... ratio=<streams/bare> (reference bare confluent-kafka loop)``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import signal
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from confluent_kafka import Consumer, TopicPartition  # noqa: E402

from heatcache import contract  # noqa: E402
from heatcache.contract import HotUrl, RequestBatch, RequestEvent  # noqa: E402
from heatcache.kafkautil import producer, read_topic  # noqa: E402
from heatcache.services.kafka import EmbeddedKafka, ensure_topics  # noqa: E402
from heatcache.settings import Settings, load_settings  # noqa: E402
from heatcache.stack import StageProcess, settings_env  # noqa: E402

BATCH = 100
TICK = os.sysconf("SC_CLK_TCK")


def make_messages(events: int, keys: int, clients: int, partitions: int, seed: int = 7) -> list[tuple[int, bytes]]:
    """(partition, value) of every message: batches of BATCH events of one bucket."""
    rnd = random.Random(seed)
    weights = list(itertools.accumulate(1.0 / (k + 1) ** 0.9 for k in range(keys)))
    names = [f"http://h{k % 500}.example/obj/{k}.bin" for k in range(keys)]
    picks = rnd.choices(range(keys), cum_weights=weights, k=events)
    pending: dict[int, list[RequestEvent]] = defaultdict(list)
    out = []
    t0 = 1_780_000_000.0
    for i, k in enumerate(picks):
        key = names[k]
        host = key.split("/")[2]
        ev = RequestEvent(t0 + i * 0.001, f"c{rnd.randrange(clients):05d}", "GET", host, key[len(host) + 7:], key, key)
        b = contract.bucket_of(key, partitions)
        pending[b].append(ev)
        if len(pending[b]) == BATCH:
            out.append((b, contract.encode(RequestBatch(b, tuple(pending.pop(b))))))
    out.extend((b, contract.encode(RequestBatch(b, tuple(evs)))) for b, evs in pending.items())
    return out


def produce(bootstrap: str, topic: str, messages: list[tuple[int, bytes]]) -> None:
    prod = producer(bootstrap, None, **{"linger.ms": 50})
    for p, value in messages:
        while True:
            try:
                prod.produce(topic, key=str(p).encode(), value=value, partition=p)
                break
            except BufferError:
                prod.poll(0.1)
    assert prod.flush(60) == 0


def bare_loop(bootstrap: str, topic: str, n_messages: int) -> tuple[int, float]:
    """Decode every batch with the contract and count distinct clients per key."""
    cons = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bare-{time.time()}", "auto.offset.reset": "earliest",
                     "enable.auto.commit": False})
    cons.subscribe([topic])
    heat: dict[str, set[str]] = defaultdict(set)
    seen = events = 0
    start = 0.0
    while seen < n_messages:
        for msg in cons.consume(1000, 1.0):
            if msg.error():
                continue
            if not start:
                start = time.perf_counter()
            batch = contract.decode(msg.value(), RequestBatch)
            for ev in batch.events:
                heat[ev.cache_key].add(ev.client)
            events += len(batch.events)
            seen += 1
    elapsed = time.perf_counter() - start
    cons.close()
    return events, elapsed


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class Commits:
    """Polls the group's committed offsets on `topic`: when the first and the last commit came."""

    def __init__(self, bootstrap: str, group: str, topic: str, partitions: int) -> None:
        self.cons = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
        self.tps = [TopicPartition(topic, p) for p in range(partitions)]

    def total(self) -> int:
        return sum(max(0, tp.offset) for tp in self.cons.committed(self.tps, timeout=10))

    def close(self) -> None:
        self.cons.close()


def run_workers(settings: Settings, n_workers: int, total_messages: int, tmp: Path, name: str,
                produce_after: list[tuple[int, bytes]] | None = None, timeout: float = 600.0) -> dict[str, object]:
    group = settings.topic_prefix + settings.app_id
    commits = Commits(settings.kafka_bootstrap, group, settings.topic(contract.REQUESTS), settings.kafka_partitions)
    procs = []
    for i in range(n_workers):
        log_dir = tmp / f"{name}-{i}"
        log_dir.mkdir()
        env = {**os.environ, **settings_env(settings.model_copy(update={"node_name": f"{name}-{i}"}))}
        procs.append(StageProcess("streams", env, log_dir, None))
    for p in procs:
        if not p.ready.wait(120):
            raise SystemExit(f"streams worker did not start: see {p.log_path}")
    if produce_after is not None:
        time.sleep(1.0)  # let the group settle (both members assigned) before the data arrives
        produce(settings.kafka_bootstrap, settings.topic(contract.REQUESTS), produce_after)
    first_t = last_t = 0.0
    first_n = 0
    cpu0: list[float] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = commits.total()
        now = time.perf_counter()
        if n and not first_t:
            first_t, first_n = now, n
            cpu0 = [cpu_seconds(p.proc.pid) for p in procs]
        if n >= total_messages:
            last_t = now
            break
        time.sleep(0.05)
    else:
        raise SystemExit(f"{name}: offsets did not reach the end in {timeout:.0f}s; see {tmp}")
    cpu1 = [cpu_seconds(p.proc.pid) for p in procs]
    for p in procs:
        p.proc.send_signal(signal.SIGTERM)
    for p in procs:
        p.stop(30)
    commits.close()
    if first_n >= total_messages:
        raise SystemExit(f"{name}: every offset was committed at the first commit, so no rate can be measured "
                         "between commits: use more --events or a shorter --flush-interval")
    events = (total_messages - first_n) * BATCH  # about: the last message of a partition may be short
    elapsed = max(last_t - first_t, 1e-6)
    per_worker = _events_per_worker(settings, [f"{name}-{i}" for i in range(n_workers)])
    cpu_per_event = [(c1 - c0) / max(1, per_worker.get(f"{name}-{i}", 0))
                     for i, (c0, c1) in enumerate(zip(cpu0, cpu1, strict=True))]
    hot = {h.admission for h in (contract.decode(m.value(), HotUrl) for m in
                                 read_topic(settings.kafka_bootstrap, settings.topic(contract.HOT_URLS), 20))}
    return {"rate": events / elapsed, "elapsed": elapsed, "cpu_per_event": cpu_per_event, "hot": hot,
            "per_worker": per_worker}


def _events_per_worker(settings: Settings, nodes: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for m in read_topic(settings.kafka_bootstrap, settings.topic(contract.METRICS), 20):
        rec = orjson.loads(m.value() or b"{}")
        if rec.get("stage") == "streams" and rec.get("node") in nodes:
            out[rec["node"]] = max(out.get(rec["node"], 0), int(rec.get("events_total") or 0))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer events, no RocksDB run (under 50 s)")
    ap.add_argument("--events", type=int, default=0, help="events in the topic (default 500000; quick 120000)")
    ap.add_argument("--flush-interval", type=float, default=0.0,
                    help="HEATCACHE_HEAT_FLUSH_INTERVAL_S of the workers (default 2 s, quick 1 s: the rate is "
                         "measured between offset commits, which follow flushes)")
    ap.add_argument("--keys", type=int, default=20_000)
    ap.add_argument("--clients", type=int, default=5_000)
    ap.add_argument("--partitions", type=int, default=3)
    args = ap.parse_args()
    # quick: 120k, not 40k: a worker at 60k events/s had folded 40k before its first commit
    # (one flush interval), so first and last commit were the same and the run measured nothing
    n_events = args.events or (120_000 if args.quick else 500_000)
    flush_s = args.flush_interval or (1.0 if args.quick else 2.0)
    with tempfile.TemporaryDirectory(prefix="bench-streams-") as tmpname:
        tmp = Path(tmpname)
        broker = EmbeddedKafka(tmp / "kafka", heap_mb=512)
        bootstrap = broker.start()
        try:
            base = load_settings(state_dir=tmp / "state", kafka_bootstrap=bootstrap, topic_prefix="bench-",
                                 client_id_secret="bench", kafka_partitions=args.partitions,
                                 metrics_interval_s=2.0, heat_metrics_interval_s=5.0,
                                 heat_flush_interval_s=flush_s, heat_commit_interval_s=0.2)
            ensure_topics(bootstrap, base)
            messages = make_messages(n_events, args.keys, args.clients, args.partitions)
            t = time.perf_counter()
            produce(bootstrap, base.topic(contract.REQUESTS), messages)
            print(f"produced {n_events} events in {len(messages)} messages ({time.perf_counter() - t:.1f} s)",
                  flush=True)
            # warm the broker first (JVM JIT, page cache, group/commit/produce paths): measured
            # here, the run that came first was up to 3x slower than the same run later
            # (rocksdb first 8.6k ev/s, after memory runs 27.5k), whichever it was. Full: an
            # untimed streams run; quick: an untimed read of the topic.
            bare_loop(bootstrap, base.topic(contract.REQUESTS), len(messages))
            if not args.quick:
                warm = base.model_copy(update={"app_id": "warm", "topic_hot_urls": "hot-warm",
                                               "state_dir": tmp / "state-warm"})
                ensure_topics(bootstrap, warm)
                run_workers(warm, 1, len(messages), tmp, "warm")
                print("warm-up done (an untimed streams run)", flush=True)
            events, elapsed = bare_loop(bootstrap, base.topic(contract.REQUESTS), len(messages))
            bare = events / elapsed
            print(f"bare confluent-kafka loop: {events} events in {elapsed:.2f} s = {bare:,.0f} events/s", flush=True)

            def variant(app_id: str, **extra: object) -> Settings:
                s = base.model_copy(update={"app_id": app_id, "topic_hot_urls": f"hot-{app_id}",
                                            "state_dir": tmp / f"state-{app_id}", **extra})
                ensure_topics(bootstrap, s)
                return s

            one = run_workers(variant("one"), 1, len(messages), tmp, "one")
            print(f"heatcache streams, 1 worker (memory store, flush every {flush_s:g} s): {one['rate']:,.0f} events/s "
                  f"({one['elapsed']:.2f} s first to last commit), CPU {one['cpu_per_event'][0] * 1e6:.1f} us/event, "  # type: ignore[index]
                  f"{len(one['hot'])} HotUrls", flush=True)  # type: ignore[arg-type]
            rocks_rate = 0.0
            if not args.quick:
                rocks = run_workers(variant("rocks", heat_store="rocksdb"), 1, len(messages), tmp, "rocks")
                rocks_rate = float(rocks["rate"])  # type: ignore[arg-type]
                print(f"heatcache streams, 1 worker (RocksDB store): {rocks_rate:,.0f} events/s, "
                      f"{len(rocks['hot'])} HotUrls, same as memory: {rocks['hot'] == one['hot']}",  # type: ignore[arg-type]
                      flush=True)
            two_rate, cpus, same = 0.0, "", "skipped"
            if not args.quick:  # two more worker start-ups do not fit in the quick budget
                two_s = variant("two", topic_requests="requests-two")
                two = run_workers(two_s, 2, len(messages), tmp, "two", produce_after=messages)
                same = str(two["hot"] == one["hot"])
                two_rate = float(two["rate"])  # type: ignore[arg-type]
                cpus = ", ".join(f"{c * 1e6:.1f}" for c in two["cpu_per_event"])  # type: ignore[attr-defined]
                print(f"heatcache streams, 2 workers: {two_rate:,.0f} events/s, events per worker "
                      f"{two['per_worker']}, CPU us/event per worker [{cpus}], same HotUrls as 1 worker: {same}",
                      flush=True)
            ratio = float(one["rate"]) / bare  # type: ignore[arg-type]
            cpu1 = one["cpu_per_event"][0] * 1e6  # type: ignore[index]
            print(f"streams: one_worker={one['rate']:.0f}/s bare={bare:.0f}/s two_workers={two_rate:.0f}/s "
                  f"rocksdb={rocks_rate:.0f}/s cpu_us_per_event_1w={cpu1:.1f} cpu_us_per_event_2w=[{cpus}] "
                  f"same_hot={same} ratio={ratio:.2f} (reference bare confluent-kafka loop)", flush=True)
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
