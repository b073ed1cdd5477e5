"""bench/fetch: the fetcher against plain ``aria2c -i list`` on the same objects from the same
local origin (nginx with ``limit_rate`` per connection and ``sendfile off``), in one run.

heatcache's time runs from the first hot-url message produced to the last CacheEvent(cached)
read back from `cache-events` (pre-flight, aria2c, hashing, the catalog and the broker's
acknowledgements included); aria2c's from its start to its exit, with the same concurrency.
Hot-url -> download-start latency per object: the origin's access-log time of the download GET
(nginx logs ``$msec`` when the answer ends, so ``$request_time`` is taken off) minus the produce
time of its hot-url message. Last line:
``fetch: heatcache=<s> aria2c=<s> start_p50=<ms> start_p95=<ms> ratio=<aria2c/heatcache> (reference aria2c -i list)``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time

from _procs import Procs, nginx_missing  # bench/_procs.py (sets up sys.path)
from confluent_kafka import Consumer, Producer

from fetcher.app import Fetcher
from heatcache import contract
from heatcache.contract import CacheEvent, HotUrl
from heatcache.lifecycle import StopFlag
from heatcache.netutil import free_port
from heatcache.services.aria2 import Aria2Daemon
from heatcache.services.kafka import EmbeddedKafka, ensure_topics
from heatcache.settings import load_settings

NGINX_HTTP = """    sendfile off;
    log_format t '$msec $request_time $request_method $uri';
    server {{
        listen 127.0.0.2:{port};
        root {www};
        limit_rate {rate};
        access_log {log} t;
    }}
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    count, size, rate = (12, 1024**2, "2m") if args.quick else (30, 2 * 1024**2, "4m")
    concurrency = 8
    if nginx_missing() or shutil.which("aria2c") is None:
        print("fetch: nginx and aria2c are needed (apt-get install nginx-light aria2)", file=sys.stderr)
        return 2
    with Procs("bench-fetch-") as procs:
        work = procs.work
        www = work / "www"
        www.mkdir()
        for i in range(count):
            (www / f"o{i}.bin").write_bytes(os.urandom(size))
        port = free_port("127.0.0.2")
        log = work / "access.log"
        procs.nginx(NGINX_HTTP.format(port=port, www=www, rate=rate, log=log), ("127.0.0.2", port))
        broker = procs.service(EmbeddedKafka(work / "kafka", heap_mb=384))
        aria2 = procs.service(Aria2Daemon(work / "aria2", secret="bench"))
        assert isinstance(broker, EmbeddedKafka) and isinstance(aria2, Aria2Daemon)
        urls = [f"http://127.0.0.2:{port}/o{i}.bin" for i in range(count)]

        # the reference: aria2c -i list, same concurrency, one connection per object
        (work / "list").write_text("\n".join(urls) + "\n")
        t0 = time.monotonic()
        subprocess.run(["aria2c", "-i", str(work / "list"), "-d", str(work / "ref"), f"-j{concurrency}", "-x1",
                        "-s1", "--file-allocation=none", "--quiet=true", "--allow-overwrite=true"], check=True)
        ref_s = time.monotonic() - t0
        log.write_text("")  # only heatcache's requests from here on
        subprocess.run(["kill", "-USR1", (work / "nginx.pid").read_text().strip()], check=False)

        bootstrap = broker.start()
        aria2.start()
        settings = load_settings(state_dir=work / "state", kafka_bootstrap=bootstrap, topic_prefix="bench-",
                                 aria2_rpc_port=aria2.port, aria2_secret="bench", allow_private_origins=True,
                                 upstream_dns=("127.0.0.1:9",), fetch_max_concurrent=concurrency,
                                 fetch_max_per_host=concurrency, client_id_secret="bench")
        ensure_topics(bootstrap, settings)
        fetcher = Fetcher(settings, bootstrap)
        stop = StopFlag()
        worker = threading.Thread(target=fetcher.run, args=(stop,))
        worker.start()
        cons = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench", "auto.offset.reset": "earliest"})
        cons.subscribe([settings.topic(contract.CACHE_EVENTS)])
        # streams' output producer batches (kafkautil linger 20 ms, a flush every HEATCACHE_HEAT_FLUSH_INTERVAL_S):
        # a burst of hot URLs reaches the broker as one batch, as aria2c gets its whole list at once.
        # linger 0 sent them one request each and the fetcher saw them over ~260 ms (measured)
        prod = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        # connected, with the topic's metadata, before the clock starts: streams' producer is long-lived
        # (a fresh one spent ~100 ms on its first connection, counted as fetcher latency before)
        prod.list_topics(settings.topic(contract.HOT_URLS), timeout=10)
        while not fetcher.consumer.assignment():  # the fetcher has joined its group
            time.sleep(0.05)
        produced: dict[str, float] = {}
        t0 = time.monotonic()
        for url in urls:
            produced[url.split(str(port))[1]] = time.time()
            prod.produce(settings.topic(contract.HOT_URLS), key=url.encode(),
                         value=contract.encode(HotUrl(url, url, "127.0.0.2", 2, 2, 86400, time.time())))
        prod.flush(10)
        done: set[str] = set()
        deadline = time.monotonic() + 300
        while len(done) < count and time.monotonic() < deadline:
            msg = cons.poll(0.2)
            if msg is None or msg.error():
                continue
            event = contract.decode(msg.value(), CacheEvent)
            if event.state == "cached":
                done.add(event.url)
            elif event.state == "failed":
                print(f"  failed: {event.url}: {event.error}")
                done.add(event.url)
        hc_s = time.monotonic() - t0
        stop.set()
        worker.join(30)
        cons.close()
        starts = []
        for line in log.read_text().splitlines():
            ts, took, method, uri = line.split()
            if method == "GET" and uri in produced:  # $msec is when the answer ended: minus its duration
                starts.append((float(ts) - float(took) - produced.pop(uri)) * 1000)
        starts.sort()
        p50 = statistics.median(starts) if starts else float("nan")
        p95 = starts[min(len(starts) - 1, int(0.95 * len(starts)))] if starts else float("nan")
        print(f"{count} objects x {size / 2**20:.0f} MiB, nginx limit_rate {rate}/connection, "
              f"concurrency {concurrency}")
        print(f"  aria2c -i list: {ref_s:.2f} s;  heatcache fetch (hot-url -> last CacheEvent): {hc_s:.2f} s")
        print(f"fetch: heatcache={hc_s:.2f}s aria2c={ref_s:.2f}s start_p50={p50:.0f}ms start_p95={p95:.0f}ms "
              f"cached={len(done)}/{count} ratio={ref_s / hc_s:.2f} "
              "(reference aria2c -i list, same objects and origin)")
        return 0


if __name__ == "__main__":
    sys.exit(main())
