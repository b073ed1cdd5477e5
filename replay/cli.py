"""``heatcache trace import`` and ``heatcache replay``: argument parsing and the thin shell over
replay's pure parts (heatcache/cli.py calls these)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from heatcache.settings import Settings
from replay.formats import FORMATS


def add_trace_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="trace_command", required=True)
    imp = sub.add_parser("import", help="load an access log or capture into the requests topic")
    imp.add_argument("file", type=Path)
    imp.add_argument("--format", default="auto", choices=("auto", *FORMATS))
    imp.add_argument("--host", default="", help="Host of origin-form targets (CLF logs of one site)")
    imp.add_argument("--max-events", type=int, default=0, help="events per batch (default: the sniffer's)")


def cmd_trace(settings: Settings, args: argparse.Namespace, bootstrap: str) -> int:
    from heatcache import contract
    from replay.kafkaio import publish_trace
    from replay.trace import read_file

    trace, fmt = read_file(args.file, settings, args.format, args.host)
    report = publish_trace(trace, bootstrap, settings.topic(contract.REQUESTS),
                           args.max_events or settings.batch_max_events, settings.batch_linger_ms / 1000)
    bad = ", ".join(f"{k}={v}" for k, v in sorted(report.bad.items())) or "none"
    span = f"{trace.events[0].ts:.3f}..{trace.events[-1].ts:.3f}" if trace.events else "-"
    print(f"trace import: {args.file} as {fmt}: {trace.lines} lines, {report.events} requests in "
          f"{report.batches} batches into {settings.topic(contract.REQUESTS)} (times {span}); "
          f"bad lines: {bad}; delivery errors: {report.errors}")
    return 1 if report.errors else 0


def main_error(msg: str) -> int:
    print(msg, file=sys.stderr)
    return 2

