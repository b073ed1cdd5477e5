"""`heatcache status`: the console's picture in the terminal (rich tables and progress bars),
``--watch`` to refresh, ``--json`` for scripts.

The snapshot comes from the running console (``/api/state``: it has the savings history) when
it answers, else from a feed of our own over Kafka, the catalog and the edge (the same view
model; savings windows then cover only what this run saw).
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from rich.console import Console, Group
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from heatcache.settings import Settings


def console_url(settings: Settings) -> str:
    host = settings.console_host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{f'[{host}]' if ':' in host else host}:{settings.console_port}"


def from_console(settings: Settings, timeout: float = 3.0) -> dict[str, Any] | None:
    """The running console's snapshot, or None when it does not answer."""
    req = urllib.request.Request(console_url(settings) + "/api/state")
    token = settings.console_token.get_secret_value()
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            data = json.loads(resp.read())
    except (OSError, ValueError):
        return None
    if isinstance(data, dict) and "stages" in data:
        data["source"] = "console"
        return data
    return None


def _bytes(n: float | None) -> str:
    if n is None:
        return "–"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _pct(r: float | None) -> str:
    return "–" if r is None else f"{100 * r:.1f}%"


def _secs(s: float | None) -> str:
    if s is None:
        return "–"
    return f"{s:.0f}s" if s < 90 else f"{s / 60:.0f}m" if s < 5400 else f"{s / 3600:.1f}h"


def render(snap: dict[str, Any]) -> Group:
    """The snapshot as rich renderables that fit 80 columns (URLs are ellipsized)."""
    parts: list[Any] = []
    st, dl, sv, cache = snap["steering"], snap["downloads"], snap["savings"], snap["cache"]
    head = Text()
    head.append("heatcache status ", style="bold")
    head.append(time.strftime("%H:%M:%S", time.localtime(snap.get("ts", time.time()))))
    head.append(f"  source: {snap.get('source', 'direct')}  ")
    head.append("prefetch PAUSED " if dl["prefetch_paused"] else "prefetch on ",
                style="yellow" if dl["prefetch_paused"] else "green")
    head.append("steering STOPPED" if st["steering_stopped"] else "steering on",
                style="yellow" if st["steering_stopped"] else "green")
    parts.append(head)

    stages = Table(title="stages", expand=True)
    for col in ("stage", "state", "snapshot", "lag", "last error"):
        stages.add_column(col, overflow="ellipsis", no_wrap=True)
    colour = {"up": "green", "down": "red", "unknown": "dim", "degraded": "yellow"}
    for r in snap["stages"]:
        stages.add_row(r["stage"], Text(r["status"], style=colour.get(r["status"], "")),
                       "never" if r["age_s"] is None else f"{_secs(r['age_s'])} ago",
                       "–" if r["lag"] is None else str(r["lag"]), r["last_error"] or "")
    parts.append(stages)

    savings = Table(title=f"savings (hits {sv['total_hits']}, served {_bytes(sv['total_bytes_saved'])})", expand=True)
    for col in ("window", "hits", "misses", "req hit", "saved", "prefetched", "byte hit"):
        savings.add_column(col, justify="right", no_wrap=True)
    for label, w in sv["windows"].items():
        savings.add_row(label, str(w["hits"]), str(w["misses"]), _pct(w["request_hit_ratio"]),
                        _bytes(w["bytes_saved"]), _bytes(w["prefetched_bytes"]), _pct(w["byte_hit_ratio"]))
    parts.append(savings)

    downloads = Table(title=f"downloads ({dl['queued_total']} queued)", expand=True)
    downloads.add_column("URL", overflow="ellipsis", no_wrap=True, ratio=3)
    downloads.add_column("state", no_wrap=True)
    downloads.add_column("progress", no_wrap=True, width=12)
    downloads.add_column("speed", justify="right", no_wrap=True)
    downloads.add_column("ETA", justify="right", no_wrap=True)
    for d in dl["running"]:
        downloads.add_row(d["url"], "running", ProgressBar(total=100, completed=d["percent"], width=12),
                          _bytes(d["speed_bps"]) + "/s", _secs(d["eta_s"]))
    for d in dl["queued"][:5]:
        downloads.add_row(d["url"], "queued", d["reason"][:12], "–", "–")
    for d in dl["failed"][:5]:
        downloads.add_row(d["url"], Text("failed", style="red"), (d["error"] or "")[:12], "–", "–")
    for d in dl["done"][:5]:
        downloads.add_row(d["url"], "done", ProgressBar(total=100, completed=100, width=12), "–", "–")
    parts.append(downloads)

    heat = Table(title="heat: top URLs", expand=True)
    heat.add_column("URL", overflow="ellipsis", no_wrap=True, ratio=3)
    heat.add_column("heat", justify="right")
    heat.add_column("clients", justify="right")
    for h in snap["heat"]["urls"][:8]:
        heat.add_row(h["url"], str(h["heat"]), str(h["clients"]))
    parts.append(heat)

    quota = f" of {_bytes(cache['quota_bytes'])} ({_pct(cache['used_share'])})" if cache["quota_bytes"] else ""
    objects = Table(title=f"cache: {_bytes(cache['bytes_used'])}{quota}, {cache['objects']} objects", expand=True)
    objects.add_column("recent", no_wrap=True)
    objects.add_column("URL", overflow="ellipsis", no_wrap=True, ratio=3)
    objects.add_column("size", justify="right", no_wrap=True)
    for e in cache["recent"][:8]:
        objects.add_row(e["state"], e["url"] or e["cache_key"], _bytes(e["size"]) if e["size"] else "–")
    parts.append(objects)

    steer = Table(title=f"steering (edge {'healthy' if st['edge_healthy'] else 'NOT answering'})", expand=True)
    steer.add_column("host", overflow="ellipsis", no_wrap=True, ratio=2)
    steer.add_column("objects", justify="right")
    steer.add_column("steered")
    steer.add_column("bypass", justify="right")
    for h in st["hosts"][:10]:
        steer.add_row(h["host"], str(h["objects"]), "yes" if h["steered"] else "no", _pct(h["bypass_ratio"]))
    parts.append(steer)
    return Group(*parts)


def run_status(settings: Settings, bootstrap: str, as_json: bool = False, watch: bool = False,
               interval: float = 2.0, out: Any = None, stop: Callable[[], bool] | None = None) -> int:
    """Print the picture once (or refresh it until Ctrl-C with ``watch``)."""
    from console.feed import Feed

    stream = out or sys.stdout
    feed: Feed | None = None

    def snap() -> dict[str, Any]:
        nonlocal feed
        data = from_console(settings)
        if data is not None:
            return data
        if feed is None:
            if not bootstrap:
                raise RuntimeError("no console answers and HEATCACHE_KAFKA_BOOTSTRAP is not set")
            feed = Feed(settings, bootstrap, poll_s=interval).start()
            feed.wait_ready(20)
        data = feed.snapshot()
        data["source"] = "direct"
        return data

    console = Console(file=stream, width=None if stream.isatty() else 80, highlight=False)
    try:
        if as_json:
            stream.write(json.dumps(snap(), indent=None, default=str) + "\n")
            return 0
        if not watch:
            console.print(render(snap()))
            return 0
        from rich.live import Live

        with Live(render(snap()), console=console, refresh_per_second=4, screen=False) as live:
            while not (stop is not None and stop()):
                time.sleep(interval)
                live.update(render(snap()))
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        if feed is not None:
            feed.stop()
