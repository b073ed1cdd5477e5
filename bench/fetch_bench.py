"""bench/fetch: the fetcher against plain ``aria2c -i list`` on the same objects from the same
local origin (nginx with ``limit_rate`` per connection and ``sendfile off``), in one run.

heatcache's time runs from the first hot-url message produced to the last CacheEvent(cached)
read back from `cache-events` (pre-flight, aria2c through the policy proxy, hashing, the catalog
and the broker's acknowledgements included); aria2c's from its start to its exit, with the same
concurrency (``-j``: what the shipped bounds let one origin host have; both bounds set with
``--concurrency``), without a proxy: the reference is plain aria2c, while every request of
the fetcher must pass the address policy (a security requirement). ``aria2c -i list`` through the
same policy proxy is timed too and printed as a diagnostic (the proxy's share), not in the ratio.

Before the clock starts, six small other objects go the whole way, one after another, two on
each partition (untimed warm-up: a running stack's broker, aria2c and proxy are warm; the first
messages on a freshly started broker took 20-100 ms more, measured). Hot-url -> download-start
latency per object: the origin's access-log time of the download GET (nginx logs ``$msec`` when
the answer ends, so ``$request_time`` is taken off) minus the produce time of its hot-url
message; the same for aria2c from its start is printed
beside it (what its own queue makes objects wait). A timeline per phase of the fetcher's jobs is
printed too. Last line:
``fetch: heatcache=<s> aria2c=<s> start_p50=<ms> start_p95=<ms> ratio=<aria2c/heatcache> (reference aria2c -i list)``.
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from _procs import Procs, nginx_missing  # bench/_procs.py (sets up sys.path)
from confluent_kafka import Consumer, Producer

from fetcher.app import Fetcher
from fetcher.policyproxy import proxy_password
from heatcache import contract
from heatcache.contract import CacheEvent, HotUrl
from heatcache.lifecycle import StopFlag
from heatcache.netutil import free_port
from heatcache.services.aria2 import Aria2Daemon
from heatcache.services.kafka import EmbeddedKafka, ensure_topics
from heatcache.services.policyproxy import PolicyProxyDaemon
from heatcache.settings import Settings, load_settings
from heatcache.stack import settings_env

NGINX_HTTP = """    sendfile off;
    log_format t '$msec $request_time $request_method $uri';
    server {{
        listen 127.0.0.2:{port};
        root {www};
        limit_rate {rate};
        access_log {log} t;
    }}
"""


WARM_UPS = 6


def aria2c(listing: Path, out: Path, concurrency: int, *extra: str) -> float:
    """``aria2c -i listing`` with one connection per object: seconds to its exit."""
    t0 = time.monotonic()
    subprocess.run(["aria2c", "-i", str(listing), "-d", str(out), f"-j{concurrency}", "-x1", "-s1",
                    "--file-allocation=none", "--quiet=true", "--allow-overwrite=true", *extra], check=True)
    return time.monotonic() - t0


def gets(log: Path) -> dict[str, tuple[float, float]]:
    """(start, end) wall time of each GET in nginx's log, by URI; the log is emptied for the next
    part. ``$msec`` is logged when the answer ends: its start is that minus ``$request_time``."""
    out = {}
    for line in log.read_text().splitlines():
        ts, took, method, uri = line.split()
        if method == "GET":
            out[uri] = (float(ts) - float(took), float(ts))
    log.write_text("")  # nginx appends (O_APPEND): its next lines start the file again
    return out


def refills(spans: list[tuple[float, float]], slots: int) -> list[float]:
    """ms from a download's end to the start of the one that took its slot: the k-th start after
    the first ``slots`` paired with the k-th end (sorted)."""
    begun = sorted(a for a, _ in spans)[slots:]
    ended = sorted(b for _, b in spans)
    return sorted((a - b) * 1000 for a, b in zip(begun, ended, strict=False))


def cpu_s(pid: int, children: bool = False) -> float:
    """User + system CPU seconds so far of a process (/proc; all its threads), with its running
    children if asked (nginx's worker)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat") if children else [Path(f"/proc/{pid}/stat")]:
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):  # itself, or its parent is pid
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def children_cpu_s() -> float:
    """CPU seconds of our children that ended (aria2c -i list)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    """CPU seconds that named processes spend between ``start()`` and ``stop()`` (each given as a
    function that reads its CPU seconds so far)."""

    def __init__(self, **read: Callable[[], float]) -> None:
        self.read = read
        self.before: dict[str, float] = {}

    def start(self) -> CpuMeter:
        self.before = {name: read() for name, read in self.read.items()}
        return self

    def stop(self) -> str:
        return ", ".join(f"{name} {read() - self.before[name]:.2f}" for name, read in self.read.items())


def p50_p95(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.median(values), values[min(len(values) - 1, int(0.95 * len(values)))]


def hot_url(url: str) -> bytes:
    return contract.encode(HotUrl(url, url, "127.0.0.2", 2, 2, 86400, time.time()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--concurrency", type=int, default=0,
                    help="downloads at once, both sides, overall and per host (default: the shipped bounds; "
                         "aria2c -j what they let one host have)")
    args = ap.parse_args()
    count, size, rate = (12, 1024**2, "2m") if args.quick else (30, 2 * 1024**2, "4m")
    # the fetcher as shipped; aria2c -j what the fetcher lets one origin host have at once
    bounds = {"fetch_max_concurrent": args.concurrency, "fetch_max_per_host": args.concurrency} \
        if args.concurrency else {}
    shipped = Settings.model_fields
    concurrency = args.concurrency or min(int(shipped["fetch_max_concurrent"].default),
                                          int(shipped["fetch_max_per_host"].default))
    if nginx_missing() or shutil.which("aria2c") is None:
        print("fetch: nginx and aria2c are needed (apt-get install nginx-light aria2)", file=sys.stderr)
        return 2
    with Procs("bench-fetch-") as procs:
        work = procs.work
        www = work / "www"
        www.mkdir()
        for i in range(count):
            (www / f"o{i}.bin").write_bytes(os.urandom(size))
        for i in range(WARM_UPS):
            (www / f"warm-up-{i}.bin").write_bytes(os.urandom(64 * 1024))
        port = free_port("127.0.0.2")
        log = work / "access.log"
        procs.nginx(NGINX_HTTP.format(port=port, www=www, rate=rate, log=log), ("127.0.0.2", port))
        broker = procs.service(EmbeddedKafka(work / "kafka", heap_mb=384))
        aria2 = procs.service(Aria2Daemon(work / "aria2", secret="bench"))
        assert isinstance(broker, EmbeddedKafka) and isinstance(aria2, Aria2Daemon)
        base = f"http://127.0.0.2:{port}"
        urls = [f"{base}/o{i}.bin" for i in range(count)]

        # the reference: aria2c -i list, same concurrency, one connection per object
        (work / "list").write_text("\n".join(urls) + "\n")
        nginx_pid = int((work / "nginx.pid").read_text())
        nginx_cpu = functools.partial(cpu_s, nginx_pid, children=True)
        ref_cpu = CpuMeter(**{"aria2c -i": children_cpu_s}, nginx=nginx_cpu).start()
        launched = time.time()
        ref_s = aria2c(work / "list", work / "ref", concurrency)
        ref_cpu_s = ref_cpu.stop()
        ref_gets = gets(log)
        ref_p50, ref_p95 = p50_p95(sorted((a - launched) * 1000 for a, _ in ref_gets.values()))
        bootstrap = broker.start()
        aria2.start()
        settings = load_settings(state_dir=work / "state", kafka_bootstrap=bootstrap, topic_prefix="bench-",
                                 aria2_rpc_port=aria2.port, aria2_secret="bench", allow_private_origins=True,
                                 upstream_dns=("127.0.0.1:9",), client_id_secret="bench", **bounds)
        # the policy proxy as its own process, as `heatcache up` and the k8s pod run it
        proxy = procs.service(PolicyProxyDaemon(work / "proxy", settings_env(settings)))
        assert isinstance(proxy, PolicyProxyDaemon)
        settings = settings.model_copy(update={"policy_proxy_port": proxy.start()})
        assert proxy.proc is not None
        # diagnostic: aria2c -i list through that proxy, and the proxy's CPU time for it
        proxy_cpu = CpuMeter(proxy=functools.partial(cpu_s, proxy.proc.pid)).start()
        proxied_s = aria2c(work / "list", work / "ref-proxied", concurrency,
                           f"--all-proxy=http://127.0.0.1:{settings.policy_proxy_port}", "--all-proxy-user=bench",
                           f"--all-proxy-passwd={proxy_password(settings)}")
        proxy_cpu_s = proxy_cpu.stop()
        gets(log)
        ensure_topics(bootstrap, settings)
        fetcher = Fetcher(settings, bootstrap)
        fetcher.timelines = []
        stop = StopFlag()
        worker = threading.Thread(target=fetcher.run, args=(stop,))
        worker.start()
        cons = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench", "auto.offset.reset": "earliest"})
        cons.subscribe([settings.topic(contract.CACHE_EVENTS)])
        # streams' output producer batches (kafkautil linger 20 ms, a flush every HEATCACHE_HEAT_FLUSH_INTERVAL_S):
        # a burst of hot URLs reaches the broker as one batch, as aria2c gets its whole list at once.
        # linger 0 sent them one request each and the fetcher saw them over ~260 ms (measured)
        prod = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        topic = settings.topic(contract.HOT_URLS)
        prod.list_topics(topic, timeout=10)  # streams' producer is long-lived: connected before the clock

        def settled(wanted: set[str], timeout: float) -> set[str]:
            """The URLs of ``wanted`` cached, once each has its CacheEvent (cached or failed)."""
            done: set[str] = set()
            cached: set[str] = set()
            deadline = time.monotonic() + timeout
            while done < wanted and time.monotonic() < deadline:
                msg = cons.poll(0.2)
                if msg is None or msg.error():
                    continue
                event = contract.decode(msg.value(), CacheEvent)
                if event.url in wanted and event.state == "failed":
                    print(f"  failed: {event.url}: {event.error}")
                if event.url in wanted and event.state in ("cached", "failed"):
                    done.add(event.url)
                    if event.state == "cached":
                        cached.add(event.url)
            return cached

        while not fetcher.consumer.assignment():  # the fetcher has joined its group
            time.sleep(0.05)
        for i in range(WARM_UPS):  # one at a time, each the whole way; every partition's produce path warmed
            warm = f"{base}/warm-up-{i}.bin"
            prod.produce(topic, key=warm.encode(), value=hot_url(warm), partition=i % settings.kafka_partitions)
            prod.flush(10)
            assert settled({warm}, 120) == {warm}, "a warm-up object was not fetched"
        fetcher.timelines.clear()
        gets(log)

        produced: dict[str, float] = {}
        acked: list[float] = []
        assert aria2.proc is not None and broker.proc is not None
        hc_cpu = CpuMeter(fetcher=time.process_time, nginx=nginx_cpu, **{  # (process_time: the bench's own too)
            name: functools.partial(cpu_s, pid) for name, pid in
            (("aria2c", aria2.proc.pid), ("proxy", proxy.proc.pid), ("broker", broker.proc.pid))}).start()
        t0 = time.monotonic()
        for url in urls:
            produced[url] = time.time()
            prod.produce(topic, key=url.encode(), value=hot_url(url),
                         on_delivery=lambda _e, _m: acked.append(time.time()))
        prod.flush(10)
        done = settled(set(urls), 300)
        hc_s = time.monotonic() - t0
        hc_cpu_s = hc_cpu.stop()
        stop.set()
        worker.join(30)
        cons.close()
        hc_gets = {base + uri: span for uri, span in gets(log).items() if base + uri in produced}
        p50, p95 = p50_p95(sorted((a - produced[url]) * 1000 for url, (a, _) in hc_gets.items()))
        first = min(produced.values())
        phases: dict[str, list[float]] = {"acked-by-broker": [(at - first) * 1000 for at in acked]}
        for key, marks in [(k, m) for k, m in fetcher.timelines if k in produced]:
            for name, at in marks.items():
                phases.setdefault(name, []).append((at - produced[key]) * 1000)
        print(f"{count} objects x {size / 2**20:.0f} MiB, nginx limit_rate {rate}/connection; aria2c -j{concurrency}, "
              f"the fetcher at most {settings.fetch_max_concurrent} overall, {settings.fetch_max_per_host} per host")
        print("  fetcher phases, ms after the hot-url's produce (p50/max): " + "  ".join(
            f"{name}={statistics.median(v):.0f}/{max(v):.0f}" for name, v in phases.items()))
        print(f"  aria2c -i list: {ref_s:.2f} s, start p50 {ref_p50:.0f} ms p95 {ref_p95:.0f} ms after its launch;"
              f"  through the policy proxy process (diagnostic): {proxied_s:.2f} s, {proxy_cpu_s} CPU-s")
        seen = sorted((m["complete"] - hc_gets[k][1]) * 1000 for k, m in fetcher.timelines
                      if k in hc_gets and "complete" in m)
        refill = [refills(list(g.values()), concurrency) for g in (ref_gets, hc_gets)]
        took = [statistics.median(b - a for a, b in g.values()) * 1000 for g in (ref_gets, hc_gets)]
        print(f"  origin's last byte sent -> the fetcher sees the completion: p50 {statistics.median(seen):.0f} ms, "
              f"max {max(seen):.0f} ms;  a freed slot's next GET (p50/max): " + (
                  f"aria2c {statistics.median(refill[0]):.0f}/{max(refill[0]):.0f} ms, heatcache "
                  f"{statistics.median(refill[1]):.0f}/{max(refill[1]):.0f} ms" if refill[0] and refill[1]
                  else "none (every download started at once)"))
        print(f"  GET durations at the origin (p50): aria2c {took[0]:.0f} ms, heatcache {took[1]:.0f} ms")
        print(f"  CPU-s: aria2c -i list: {ref_cpu_s};  heatcache: {hc_cpu_s}")
        print(f"  heatcache fetch (hot-url -> last CacheEvent): {hc_s:.2f} s")
        print(f"fetch: heatcache={hc_s:.2f}s aria2c={ref_s:.2f}s start_p50={p50:.0f}ms start_p95={p95:.0f}ms "
              f"cached={len(done)}/{count} ratio={ref_s / hc_s:.2f} "
              "(reference aria2c -i list, same objects and origin)")
        return 0


if __name__ == "__main__":
    sys.exit(main())
