"""``heatcache demo``: the whole stack on embedded defaults, a sample origin and a few clients.

Loopback stands in for a campus: the origin is 127.0.0.2, the cache node 127.0.0.3, the
upstream resolver a dnsmasq on 127.0.0.1 that knows the origin's name, and each client has its
own source address 127.0.1.N. Clients resolve the origin's name through heatcache's DNS, so
once an object is hot and fetched, their next request goes to the edge instead of the origin.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

from heatcache import contract
from heatcache.contract import CacheEvent, DecodeError, HotUrl, RequestBatch
from heatcache.kafkautil import read_topic
from heatcache.lab import (
    NODE_IP,
    ORIGIN_IP,
    Origin,
    client_get,
    client_sources,
    lab_settings,
    make_sample_files,
    resolve_via,
    shared_port,
)
from heatcache.services.dnsmasq import Dnsmasq
from heatcache.settings import Settings
from heatcache.stack import Stack

ORIGIN_HOST = "origin.demo.test"
FILES = {"installer.iso": 3 * 1024**2, "lecture.mp4": 2 * 1024**2, "update.cab": 1024**2, "slides.pdf": 300_000}
RARE = {"rare.zip": 500_000}  # asked by one client only: never hot, always passed through


def run_demo(base: Settings, verbose: bool = False, clients: int = 5) -> int:
    console = Console()
    base.state_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="demo-", dir=base.state_dir)).resolve()
    files = make_sample_files(work / "origin", {**FILES, **RARE})
    port = shared_port()
    origin = Origin(work / "origin", ORIGIN_IP, port).start()
    upstream = Dnsmasq({ORIGIN_HOST: ORIGIN_IP})
    stack: Stack | None = None
    started = time.monotonic()
    try:
        upstream.start()
        settings = lab_settings(base, work / "state", port, upstream.upstream)
        console.print(f"[bold]heatcache demo[/]: origin http://{ORIGIN_HOST}:{port} on {ORIGIN_IP}, "
                      f"cache node {NODE_IP}, {clients} clients; starting the stack (Kafka, aria2c, 5 stages)...")
        stack = Stack(settings, console=sys.stdout if verbose else None).start()
        console.print(f"stack up in {time.monotonic() - started:.0f}s (Kafka at {stack.bootstrap})")
        if "console" in stack.children:
            console.print(f"operator console: http://{settings.console_host}:{settings.console_port}/")
        dns_addr = (settings.dns_host, settings.dns_port)
        sources = client_sources(clients)
        replies: Counter[str] = Counter()

        def round_(label: str) -> None:
            for src in sources:
                for name in FILES:
                    reply = client_get(src, dns_addr, ORIGIN_HOST, port, f"/{name}")
                    ok = reply.status == 200 and reply.body == files[name]
                    replies[f"{label}:{reply.headers.get('x-cache', 'ORIGIN')}:{'ok' if ok else 'BAD'}"] += 1
                    if ok and reply.headers.get("x-cache") == "HIT":
                        replies["hit-bytes"] += len(reply.body)
            reply = client_get(sources[0], dns_addr, ORIGIN_HOST, port, "/rare.zip")
            replies[f"{label}:rare:{reply.headers.get('x-cache', 'ORIGIN')}"] += 1

        console.print("round 1: every client downloads the popular files from the origin")
        round_("round1")
        console.print("waiting for heat -> hot-urls -> aria2 -> cache-events -> DNS steering ...")
        deadline = time.monotonic() + 90
        while resolve_via(dns_addr, ORIGIN_HOST) != [NODE_IP]:
            if time.monotonic() > deadline or stack.failed():
                console.print("[red]the origin was never steered to the cache node[/]")
                return 1
            time.sleep(0.5)
        # steering starts with the first cached object; wait for the rest before round 2
        while time.monotonic() < deadline:
            cached = _cache_events(stack.bootstrap, settings)
            if sum(1 for e in cached.values() if e.state == "cached" and e.source == "fetch") >= len(FILES):
                break
            time.sleep(0.5)
        console.print(f"{ORIGIN_HOST} now resolves to {NODE_IP}: round 2 goes to the edge")
        origin_before = sum(origin.hits.values())
        round_("round2")
        origin_round2 = sum(origin.hits.values()) - origin_before
        return _report(console, stack, settings, replies, origin, origin_round2, files, started)
    finally:
        if stack is not None:
            stack.stop()
        upstream.stop()
        origin.stop()
        shutil.rmtree(work, ignore_errors=True)


def _cache_events(bootstrap: str, settings: Settings) -> dict[str, CacheEvent]:
    out = {}
    for msg in read_topic(bootstrap, settings.topic(contract.CACHE_EVENTS), timeout=5):
        try:
            ev = contract.decode(msg.value(), CacheEvent)
        except DecodeError:
            continue
        out[ev.cache_key] = ev
    return out


def _report(console: Console, stack: Stack, settings: Settings, replies: Counter[str], origin: Origin,
            origin_round2: int, files: dict[str, bytes], started: float) -> int:
    requests = sum(len(contract.decode(m.value(), RequestBatch).events)
                   for m in read_topic(stack.bootstrap, settings.topic(contract.REQUESTS)))
    hot = [contract.decode(m.value(), HotUrl) for m in read_topic(stack.bootstrap, settings.topic(contract.HOT_URLS))]
    events = [e for e in _cache_events(stack.bootstrap, settings).values() if e.state == "cached"]
    cached = [e for e in events if e.source == "fetch"]
    filled = [e for e in events if e.source == "fill"]
    hits = sum(v for k, v in replies.items() if k.startswith("round2:HIT:ok"))
    bad = sum(v for k, v in replies.items() if k.endswith("BAD"))
    sizes = {f"/{n}": len(b) for n, b in files.items()}
    table = Table(title="what happened")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("requests seen by the sniffer (on Kafka)", str(requests))
    table.add_row("hot URLs emitted by streams", str(len(hot)))
    table.add_row("objects fetched by aria2 into the cache", str(len(cached)))
    table.add_row("bytes prefetched once through the uplink", f"{sum(e.size for e in cached):,}")
    table.add_row("objects stored in-path by the edge (misses of a steered host)", str(len(filled)))
    table.add_row("round 2 requests served locally (X-Cache: HIT, bytes identical)", str(hits))
    table.add_row("round 2 requests that reached the origin", str(origin_round2))
    table.add_row("bytes served locally in round 2", f"{replies['hit-bytes']:,}")
    table.add_row("responses with wrong bytes", str(bad))
    table.add_row("origin GETs by path", ", ".join(f"{p}={n}" for p, n in sorted(origin.hits.items()) if p in sizes))
    console.print(table)
    console.print(f"demo finished in {time.monotonic() - started:.0f}s")
    if hits == 0 or bad:
        console.print("[red]demo FAILED: no local hits or wrong bytes[/]")
        return 1
    console.print(f"[green]local hits: {hits}[/]")
    return 0
