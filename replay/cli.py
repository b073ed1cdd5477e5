"""``heatcache trace import`` and ``heatcache replay``: argument parsing and the thin shell over
replay's pure parts (heatcache/cli.py calls these)."""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from heatcache.settings import Settings
from replay.formats import FORMATS

if TYPE_CHECKING:
    from replay.trace import Trace


def add_trace_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="trace_command", required=True)
    imp = sub.add_parser("import", help="load an access log or capture into the requests topic")
    imp.add_argument("file", type=Path)
    imp.add_argument("--format", default="auto", choices=("auto", *FORMATS))
    imp.add_argument("--host", default="", help="Host of origin-form targets (CLF logs of one site)")
    imp.add_argument("--max-events", type=int, default=0, help="events per batch (default: the sniffer's)")
    gen = sub.add_parser("generate", help="write one of the traces bench/replay names as CSV (ts,client,url,size), "
                                          "to replay or import")
    gen.add_argument("name", choices=("campus", "one-timers", "skewed", "flat"))
    gen.add_argument("file", type=Path)
    gen.add_argument("--requests", type=int, default=200_000)
    gen.add_argument("--seed", type=int, default=1)


def write_csv_trace(trace: Trace, path: Path) -> None:
    """A trace as the importer's CSV format (``ts,client,url,size``), times to the microsecond."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(("ts", "client", "url", "size"))
        for ev, size in zip(trace.events, trace.sizes, strict=True):
            w.writerow((f"{ev.ts:.6f}", ev.client, ev.url, size))


def cmd_trace(settings: Settings, args: argparse.Namespace, bootstrap: str) -> int:
    from heatcache import contract
    from replay.kafkaio import publish_trace
    from replay.trace import read_file

    if args.trace_command == "generate":
        from replay.gen import make_trace, named_traces

        named = next(n for n in named_traces(args.requests, args.seed) if n.name == args.name)
        trace = make_trace(named.params, named.clients, args.seed)
        write_csv_trace(trace, args.file)
        print(f"trace generate: {args.file}: {named.name} ({named.about}), {len(trace)} requests, "
              f"{len({ev.cache_key for ev in trace.events})} objects, seed {args.seed}")
        return 0

    trace, fmt = read_file(args.file, settings, args.format, args.host)
    report = publish_trace(trace, bootstrap, settings.topic(contract.REQUESTS),
                           args.max_events or settings.batch_max_events, settings.batch_linger_ms / 1000,
                           settings=settings)
    bad = ", ".join(f"{k}={v}" for k, v in sorted(report.bad.items())) or "none"
    span = f"{trace.events[0].ts:.3f}..{trace.events[-1].ts:.3f}" if trace.events else "-"
    unit = "packets" if fmt == "pcap" else "lines"
    print(f"trace import: {args.file} as {fmt}: {trace.lines} {unit}, {report.events} requests in "
          f"{report.batches} batches into {settings.topic(contract.REQUESTS)} (times {span}); "
          f"{'packets without a request' if fmt == 'pcap' else 'bad lines'}: {bad}; delivery errors: {report.errors}")
    return 1 if report.errors else 0


def main_error(msg: str) -> int:
    print(msg, file=sys.stderr)
    return 2



def _size(text: str) -> int:
    text = text.strip().upper()
    for unit, mul in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if text.endswith(unit) or text.endswith(unit + "B"):
            return int(float(text.rstrip("B")[:-1]) * mul)
    return int(text)


def _list(kind: type, text: str) -> list[Any]:
    out: list[Any] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if kind is bool:
            out.append(part.lower() in ("on", "true", "yes", "1"))
        elif kind is int:
            out.append(_size(part))
        else:
            out.append(part)
    return out


def add_replay_args(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("what to replay (a file, or a time range of the requests topic)")
    src.add_argument("--file", type=Path, help="an access log or capture (any `trace import` format)")
    src.add_argument("--format", default="auto", choices=("auto", *FORMATS))
    src.add_argument("--host", default="", help="Host of origin-form targets (CLF logs of one site)")
    src.add_argument("--from", dest="start", default="", help="start time (epoch seconds or ISO 8601)")
    src.add_argument("--to", dest="end", default="", help="end time (default: the end of the topic)")
    src.add_argument("--default-size", type=_size, default=1 << 20,
                     help="object size when neither the log nor cache-events knows it (default 1M)")
    grid = p.add_argument_group("the grid (comma-separated values)")
    grid.add_argument("--windows", default="3600,21600,86400", help="heat windows in seconds")
    grid.add_argument("--min-clients", default="2,3")
    grid.add_argument("--quotas", default="0", help="cache sizes (0 = no quota; 500G, 2T ...)")
    grid.add_argument("--policies", default="store",
                      help="eviction: store (what the cache store evicts), heat (cachestore.policy's "
                           "decayed-frequency model), lru (baseline)")
    grid.add_argument("--fill", default="on", help="in-path fill: on,off")
    grid.add_argument("--prefetch", default="on", help="prefetch by heat: on,off")
    grid.add_argument("--first-access", action="store_true", help="add the fetch-on-first-access rule")
    grid.add_argument("--half-life", type=float, default=4 * 3600.0, help="eviction half-life in seconds")
    p.add_argument("--jobs", type=int, default=0, help="settings run at once (default: one per CPU)")
    p.add_argument("--no-baselines", action="store_true", help="skip LRU/S3-FIFO/ceiling/oracle")
    p.add_argument("--out", type=Path, default=Path("replay-report"), help="directory for CSV, JSON and HTML")
    p.add_argument("--shadow", action="store_true",
                   help="also run a real streams worker on a prefixed copy of the range with the recommended "
                        "setting and compare its HotUrls with the simulated ones (needs Kafka)")
    p.add_argument("--shadow-timeout", type=float, default=240.0,
                   help="seconds the shadow worker has to commit the whole copy (default 240)")


def _time(text: str) -> float:
    from replay.formats import parse_ts

    return parse_ts(text)


def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    from collections import Counter

    from heatcache import contract
    from replay import report
    from replay.engine import prepare
    from replay.grid import Outcome, grid, run_baselines, run_grid
    from replay.trace import batches, read_file

    known: dict[str, int] = {}
    failed: set[str] = set()  # production's fetch outcomes: downloads that failed
    bad: Counter[str] = Counter()
    if args.file:
        trace, fmt = read_file(args.file, settings, args.format, args.host)
        bad.update(trace.bad)
        batch_list = list(batches(trace, settings.kafka_partitions, settings.batch_max_events,
                                  settings.batch_linger_ms / 1000))
        source = f"{args.file} ({fmt})"
    elif args.start:
        if not settings.kafka_bootstrap:
            return main_error("heatcache replay: --from needs HEATCACHE_KAFKA_BOOTSTRAP (or give --file)")
        from replay.kafkaio import fetch_outcomes, read_range

        start, end = _time(args.start), (_time(args.end) if args.end else None)
        batch_list = read_range(settings.kafka_bootstrap, settings.topic(contract.REQUESTS), start, end, bad=bad,
                                settings=settings)
        known, failed = fetch_outcomes(settings)
        source = f"{settings.topic(contract.REQUESTS)} from {args.start} to {args.end or 'the end'}"
    else:
        return main_error("heatcache replay: give --file PATH or --from TIME [--to TIME]")
    prep = prepare(batch_list, args.default_size, known, failed)
    quotas = _list(int, args.quotas) or [0]
    settings_grid = grid(_list(int, args.windows), _list(int, args.min_clients), quotas,
                         _list(str, args.policies), _list(bool, args.fill), _list(bool, args.prefetch),
                         args.first_access, args.half_life)
    results = run_grid(prep, settings_grid, settings, args.jobs)
    base_rows, oracle = ([], []) if args.no_baselines else run_baselines(prep, quotas, settings)
    n = sum(len(b.events) for b in prep.batches)
    outcome = Outcome(results, base_rows, oracle, {
        "source": source, "requests": n, "objects": len(prep.object_size),
        "bytes_requested": results[0].bytes_requested if results else 0,
        "hours": (prep.t1 - prep.t0) / 3600, "bad": dict(bad)})
    print(report.table(outcome), end="")
    paths = report.write_all(outcome, args.out)
    if bad:
        print("not replayed: " + ", ".join(f"{k}={v}" for k, v in sorted(bad.items())))
    print(f"report: {paths['html']} (CSV {paths['csv']}, JSON {paths['json']})")
    if args.shadow:
        if not settings.kafka_bootstrap:
            return main_error("heatcache replay: --shadow needs HEATCACHE_KAFKA_BOOTSTRAP")
        from replay.engine import Setting
        from replay.shadow import shadow

        best = outcome.recommended()
        candidate = Setting(**best.params) if best is not None else settings_grid[0]
        try:
            result = shadow(batch_list, candidate, settings, args.shadow_timeout)
        except TimeoutError as exc:
            return main_error(f"heatcache replay: {exc}")
        print(result.summary())
        for key, ts in (result.only_simulated + result.only_emitted)[:10]:
            print(f"  differs: {key} @ {ts:.3f}")
        if not result.identical:
            print("the shadow worker's last log lines:\n" + result.worker_log)
        return 0 if result.identical else 1
    return 0
