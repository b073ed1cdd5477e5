"""The ``heatcache`` command: one subcommand per stage plus the local stack and the demo.

Each command is a plain function taking the settings (built once, here) and its arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable

from heatcache.lifecycle import StopFlag, announce_ready, setup_logging
from heatcache.settings import Settings, SettingsError, load_settings

log = logging.getLogger("heatcache")


class UsageError(RuntimeError):
    """A command cannot run with these settings; the message says what to set."""


def _bootstrap(settings: Settings) -> str:
    if not settings.kafka_bootstrap:
        raise UsageError("HEATCACHE_KAFKA_BOOTSTRAP is not set: point it at Kafka, or run `heatcache up`, "
                         "which starts an embedded broker")
    return settings.kafka_bootstrap


def cmd_sniff(settings: Settings, _args: argparse.Namespace) -> int:
    from sniffer.app import Sniffer

    Sniffer(settings, _bootstrap(settings)).run(StopFlag().install())
    return 0


def cmd_streams(settings: Settings, _args: argparse.Namespace) -> int:
    from streams.app import run

    run(settings, _bootstrap(settings))
    return 0


def cmd_fetch(settings: Settings, _args: argparse.Namespace) -> int:
    from fetcher.app import Fetcher

    Fetcher(settings, _bootstrap(settings)).run(StopFlag().install())
    return 0


def _serve(settings: Settings, stage: str) -> int:
    """dns and edge: follow cache-events, serve until SIGTERM, then close listeners."""
    from dns_redirect.index import CacheEventsFollower, CacheIndex
    from heatcache import contract
    from heatcache.metrics import serve_metrics

    index = CacheIndex()
    follower = CacheEventsFollower(_bootstrap(settings), settings.topic(contract.CACHE_EVENTS), index)
    follower.start()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        flag = StopFlag().install()
        flag.on_stop(lambda: _call_soon(loop, stop.set))
        while not follower.ready.is_set():
            await asyncio.sleep(0.1)
            if flag.is_set():
                return
        if stage == "dns":
            from dns_redirect.server import DnsServer

            server = DnsServer(settings, index)
            await server.start()
            if settings.metrics_port:
                serve_metrics(settings.metrics_port, "dns", server.counters)
            announce_ready("dns")
            await stop.wait()
            await server.stop()
            log.info("dns stopped: %s", dict(server.counters))
        else:
            import resource

            from cachestore.catalog import open_catalog
            from dns_redirect.edge import Edge
            from heatcache.cachekey import KeyRules
            from heatcache.kafkautil import producer

            prod = producer(_bootstrap(settings))
            catalog = open_catalog(settings.catalog)
            edge = Edge(settings, index, KeyRules.load(settings.cache_key_rules), catalog, prod)
            # one descriptor per connection plus the open objects: take what the system allows
            _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            await edge.start(settings.edge_host, settings.edge_port)
            if settings.metrics_port:
                serve_metrics(settings.metrics_port, "edge", edge.counters)
            log.info("edge on %s:%d", settings.edge_host, settings.edge_port)
            announce_ready("edge")
            await stop.wait()
            await edge.stop()  # flushes pending hit counts to the catalog
            prod.flush(10)
            catalog.close()
            log.info("edge stopped: %s", dict(edge.counters))

    try:
        import uvloop  # libuv's loop: more DNS answers and edge hits per core (the edge's hit
        # front sends bodies with os.sendfile itself, so uvloop's missing loop.sendfile is no loss)

        uvloop.run(main())
    finally:
        follower.stop()
        follower.join(5)
    return 0


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[[], None]) -> None:
    loop.call_soon_threadsafe(fn)


def cmd_dns(settings: Settings, _args: argparse.Namespace) -> int:
    return _serve(settings, "dns")


def cmd_edge(settings: Settings, _args: argparse.Namespace) -> int:
    return _serve(settings, "edge")


def cmd_broker(settings: Settings, _args: argparse.Namespace) -> int:
    """Run only the embedded Kafka broker (for other tools), with the topics created."""
    from heatcache.services.kafka import EmbeddedKafka, ensure_topics

    broker = EmbeddedKafka(settings.state_dir / "kafka", settings.kafka_port, settings.kafka_heap_mb)
    bootstrap = broker.start()
    ensure_topics(bootstrap, settings)
    print(f"Kafka at {bootstrap} (Ctrl-C stops it)", flush=True)
    try:
        StopFlag().install().wait()
    finally:
        broker.stop()
    return 0


def cmd_nginx_conf(settings: Settings, args: argparse.Namespace) -> int:
    """Print the nginx server block that fronts the edge (hits by X-Accel-Redirect)."""
    from heatcache.nginxconf import server_block

    try:
        print(server_block(settings, args.listen), end="")
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    return 0


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    from heatcache.stack import STAGES, Stack

    stages = [s for s in STAGES if s not in set(args.without or [])]
    stop = StopFlag().install()
    stack = Stack(settings, stages)
    stack.start()
    print(f"heatcache up: Kafka {stack.bootstrap}, DNS {settings.dns_host}:{settings.dns_port}, "
          f"edge {settings.edge_host}:{settings.edge_port}. Ctrl-C stops everything.", flush=True)
    try:
        while not stop.wait(1.0):
            dead = stack.failed()
            if dead:
                log.error("stage(s) %s exited; stopping the stack", ", ".join(dead))
                return 1
    finally:
        codes = stack.stop()
        print(f"heatcache stopped: {codes}", flush=True)
    return 0


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from heatcache.demo import run_demo

    return run_demo(settings, verbose=args.verbose)


# -- replay (issue 19): trace import and replay
def cmd_trace(settings: Settings, args: argparse.Namespace) -> int:
    from replay.cli import cmd_trace as run

    return run(settings, args, _bootstrap(settings))


def _replay_args(name: str, p: argparse.ArgumentParser) -> None:
    from replay import cli as replay_cli

    if name == "trace":
        replay_cli.add_trace_args(p)


COMMANDS: dict[str, tuple[Callable[[Settings, argparse.Namespace], int], str]] = {
    "sniff": (cmd_sniff, "capture HTTP requests and publish them to Kafka"),
    "streams": (cmd_streams, "the Faust app: windowed heat, hot-url emission"),
    "fetch": (cmd_fetch, "fetch hot URLs through aria2c into the cache"),
    "dns": (cmd_dns, "DNS server steering cached hosts to the cache node"),
    "edge": (cmd_edge, "edge HTTP server: hits from disk, misses passed through"),
    "nginx-conf": (cmd_nginx_conf, "print the nginx server block to put nginx in front of the edge"),
    "broker": (cmd_broker, "run the embedded single-node Kafka broker alone"),
    "up": (cmd_up, "run the whole stack locally (embedded Kafka, aria2c, every stage)"),
    "demo": (cmd_demo, "the stack plus a sample origin and clients; prints what happened"),
    "trace": (cmd_trace, "trace import FILE: load an access log or capture into the requests topic"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="heatcache", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_fn, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name == "up":
            p.add_argument("--without", action="append", choices=["streams", "fetch", "dns", "edge", "sniff"],
                           help="leave a stage out (repeatable)")
        if name == "nginx-conf":
            p.add_argument("--listen", default="80", help="nginx's listen directive (default 80)")
        if name == "demo":
            p.add_argument("--verbose", action="store_true", help="show every stage's log lines")
        if name in ("trace", "replay"):
            _replay_args(name, p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.command, args.log_level)
    try:
        settings = load_settings()
        fn, _ = COMMANDS[args.command]
        return fn(settings, args)
    except (SettingsError, UsageError) as exc:
        print(f"heatcache {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
