"""The ``heatcache`` command: one subcommand per stage plus the local stack and the demo.

Each command is a plain function taking the settings (built once, here) and its arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from heatcache.lifecycle import StopFlag, setup_logging
from heatcache.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from confluent_kafka import Message, Producer

    from dns_redirect.index import CacheIndex
    from heatcache.runner import Runner

log = logging.getLogger("heatcache")


class UsageError(RuntimeError):
    """A command cannot run with these settings; the message says what to set."""


def _bootstrap(settings: Settings) -> str:
    if not settings.kafka_bootstrap:
        raise UsageError("HEATCACHE_KAFKA_BOOTSTRAP is not set: point it at Kafka, or run `heatcache up`, "
                         "which starts an embedded broker")
    return settings.kafka_bootstrap


def cmd_sniff(settings: Settings, _args: argparse.Namespace) -> int:
    from heatcache.metrics import SNIFFER
    from heatcache.runner import Runner
    from sniffer.app import main

    return Runner(settings, SNIFFER, bootstrap=_bootstrap(settings), secrets=("client_id_secret",)).run(main)


def cmd_streams(settings: Settings, _args: argparse.Namespace) -> int:
    from streams.app import run

    return run(settings, _bootstrap(settings))


def cmd_fetch(settings: Settings, _args: argparse.Namespace) -> int:
    from fetcher.app import Fetcher
    from heatcache.metrics import FETCHER
    from heatcache.runner import EX_CONFIG, Runner
    from heatcache.settings import default_secrets

    bad = default_secrets(settings, ("aria2_secret",))
    if bad:
        log.error("%s still holds the shipped default secret: set your own (or HEATCACHE_LAB_MODE=true)", bad[0])
        return EX_CONFIG
    bootstrap = _bootstrap(settings)
    run = Runner(settings, FETCHER, bootstrap=bootstrap)

    def main(run: Runner) -> None:
        Fetcher(settings, bootstrap, runner=run).run(run.stop)

    return run.run(main)


def cmd_policy_proxy(settings: Settings, _args: argparse.Namespace) -> int:
    """The fetcher's address-policy proxy for aria2c as its own process (rel; `heatcache up`
    starts and supervises it like aria2c)."""
    from fetcher.policyproxy import serve
    from heatcache.runner import EX_CONFIG
    from heatcache.settings import default_secrets

    if not settings.policy_proxy_port:
        log.error("HEATCACHE_POLICY_PROXY_PORT is not set: the proxy needs the port the fetcher uses")
        return EX_CONFIG
    if default_secrets(settings, ("aria2_secret",)):  # its password is derived from this secret
        log.error("aria2_secret still holds the shipped default secret: set your own (or HEATCACHE_LAB_MODE=true)")
        return EX_CONFIG
    return serve(settings)


def _serve(settings: Settings, stage: str) -> int:
    """dns and edge on the stage runner: follow cache-events, serve until SIGTERM, close listeners."""
    from heatcache.metrics import DNS, EDGE
    from heatcache.runner import Runner

    run = Runner(settings, DNS if stage == "dns" else EDGE, bootstrap=_bootstrap(settings))
    return run.run_async(_serve_main)


async def _serve_main(run: Runner) -> None:
    from dns_redirect.index import CacheEventsFollower, CacheIndex
    from heatcache import contract
    from heatcache.kafkautil import client_config, dead_letter, producer

    settings, stage = run.settings, run.stage
    index = CacheIndex()
    prod = producer(run.bootstrap, settings, error_cb=run.kafka_error_cb)

    def bad_event(msg: Message, reason: str) -> None:  # the error policy: dead-letter, keep following
        run.counters["index.bad-events"] += 1
        dead_letter(prod, settings, msg, reason)

    # the follower reads in its thread; this loop applies every change (the index's one writer)
    follower = CacheEventsFollower(run.bootstrap, settings.topic(contract.CACHE_EVENTS), index,
                                   asyncio.get_running_loop(), on_bad=bad_event, health=run.health,
                                   config=client_config(settings))
    follower.start()
    try:
        while not follower.ready.is_set():
            if not follower.is_alive():  # not expected (it waits for the broker): the supervisor restarts us
                raise RuntimeError("the cache-events follower stopped before catching up")
            if run.stop.is_set():
                return
            await asyncio.sleep(0.1)
        if stage == "dns":
            await _serve_dns(run, index)
        else:
            await _serve_edge(run, index, prod)
    finally:
        follower.stop()
        follower.join(5)
        prod.flush(5)


async def _serve_dns(run: Runner, index: CacheIndex) -> None:
    from dns_redirect.server import DnsServer

    server = DnsServer(run.settings, index)
    server.counters = run.counters  # the runner's Counter: what /metrics and snapshots read
    run.metrics.bind("steered-hosts", lambda: len(index.hosts))
    # the operator's kill switch from the `control` topic, applied on the server's loop
    from heatcache import contract
    from heatcache.control import ControlFollower, ControlState

    loop = asyncio.get_running_loop()

    def switch(state: ControlState) -> None:
        if state.steering_stopped != server.steering_stopped:
            log.warning("steering %s by the operator", "STOPPED" if state.steering_stopped else "started")
        server.steering_stopped = state.steering_stopped or not run.settings.dns_steering

    def on_change(state: ControlState) -> None:  # on the follower's thread
        loop.call_soon_threadsafe(switch, state)

    control = ControlFollower(run.bootstrap, run.settings.topic(contract.CONTROL), on_change=on_change,
                              health=run.health, config=run.settings.kafka_client_config())
    control.start()
    await loop.run_in_executor(None, control.wait_ready, 10.0)  # a stop switched earlier holds from the start
    await server.start()
    run.ready()
    await run.stopped()
    control.stop()
    await server.stop()
    log.info("dns stopped: %s", dict(server.counters))


async def _serve_edge(run: Runner, index: CacheIndex, prod: Producer) -> None:
    import resource

    from cachestore.catalog import open_catalog
    from dns_redirect.edge import Edge
    from heatcache.cachekey import KeyRules

    settings = run.settings
    catalog = open_catalog(settings.catalog)
    edge = Edge(settings, index, KeyRules.load(settings.cache_key_rules), catalog, prod)
    edge.counters = run.counters  # the runner's Counter: what /metrics and snapshots read
    run.metrics.bind("objects", lambda: len(index.objects))
    # one descriptor per connection plus the open objects: take what the system allows
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    from dns_redirect.edge import start_listeners
    from heatcache.runner import ConfigError

    try:
        served = await start_listeners(edge, settings)  # its port, every sniffed port, the mapped ones
    except PermissionError as exc:  # a privileged port without the right: the message names the fix
        raise ConfigError(str(exc)) from exc
    log.info("edge on %s:%d (client ports %s)", settings.edge_host, settings.edge_port, ",".join(map(str, served)))
    from dns_redirect.passthrough import TlsPassthrough

    tls = TlsPassthrough(settings, index, run.counters)  # HTTPS of steered hosts, spliced by SNI
    try:
        await tls.start(settings.edge_host, settings.edge_tls_ports)
    except OSError as exc:
        await edge.stop()
        if isinstance(exc, PermissionError):  # 443 without the right: exit 78 naming the fix, no restart loop
            raise ConfigError(str(exc)) from exc
        raise
    edge.tls_hosts = tls.figures.as_dict
    bypass = _start_bypass(run, index, edge, tls, prod)  # leak detection (steer, issue 18)
    run.ready()
    await run.stopped()
    await bypass()
    await tls.stop()
    await edge.stop()  # flushes pending hit counts to the catalog
    catalog.close()
    log.info("edge stopped: %s", dict(edge.counters))


def _start_bypass(run: Runner, index: CacheIndex, edge: Any, tls: Any, prod: Producer) -> Callable[[], Any]:
    """Follow `requests` for the bypass ratio of every steered host; publish the per-host figures
    as the ``edge-top`` metrics record every metrics interval. Returns the async stopper."""
    from dns_redirect.bypass import RECORD, BypassWatch, RequestsFollower, edge_steers
    from heatcache import contract
    from heatcache.control import ControlFollower, ControlState
    from heatcache.kafkautil import publish_metrics

    settings = run.settings
    loop = asyncio.get_running_loop()
    steers = edge_steers(index, settings.never_steer_hosts, lambda: (edge.ports, edge.tls_ports))
    watch = BypassWatch(settings, steers, run.counters)

    def on_control(state: ControlState) -> None:  # on the follower's thread: the kill switch, as the DNS sees it
        ev = state.steering
        if ev is not None or watch.switch.changes:
            stopped = state.steering_stopped
            loop.call_soon_threadsafe(watch.on_control, stopped, ev.ts if ev is not None else time.time())

    control = ControlFollower(run.bootstrap, settings.topic(contract.CONTROL), on_change=on_control,
                              config=settings.kafka_client_config())
    control.start()
    follower = RequestsFollower(run.bootstrap, settings.topic(contract.REQUESTS), loop, watch.on_events,
                                run.counters, settings.kafka_client_config())
    follower.start()
    period = settings.metrics_interval_s or 10.0

    async def ticks() -> None:
        while True:
            now = time.time()
            watch.collect(now, edge.served_keys, edge.served_hosts, tls.figures.as_dict())
            fields = watch.tick(now)
            if settings.metrics_interval_s > 0:
                try:
                    publish_metrics(prod, settings, RECORD, fields)
                except BufferError:
                    pass  # the broker is away: the next record supersedes this one
            await asyncio.sleep(min(period, 5.0))

    task = asyncio.create_task(ticks())

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        follower.stop()
        control.stop()
        await loop.run_in_executor(None, follower.join, 5)
        await loop.run_in_executor(None, control.join, 5)

    return stop


def cmd_dns(settings: Settings, _args: argparse.Namespace) -> int:
    return _serve(settings, "dns")


def cmd_edge(settings: Settings, _args: argparse.Namespace) -> int:
    return _serve(settings, "edge")


def cmd_broker(settings: Settings, _args: argparse.Namespace) -> int:
    """Run only the embedded Kafka broker (for other tools), with the topics created."""
    from heatcache.services.kafka import EmbeddedKafka, ensure_topics

    broker = EmbeddedKafka(settings.state_dir / "kafka", settings.kafka_port, settings.kafka_heap_mb,
                           fast_start=settings.kafka_fast_start)
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
    from heatcache.runner import EX_CONFIG, ConfigError
    from heatcache.services.procs import StackRunning
    from heatcache.stack import STAGES, PortTaken, Stack

    stages = [s for s in STAGES if s not in set(args.without or [])]
    stop = StopFlag().install()
    stack = Stack(settings, stages)
    try:
        stack.start()
    except ConfigError as exc:
        print(f"heatcache up: {exc}", file=sys.stderr)
        return EX_CONFIG
    except (PortTaken, StackRunning) as exc:
        print(f"heatcache up: {exc}", file=sys.stderr)
        return 1
    print(f"heatcache up: Kafka {stack.bootstrap}, DNS {settings.dns_host}:{settings.dns_port}, "
          f"edge {settings.edge_host}:{settings.edge_port}. Ctrl-C stops everything.", flush=True)
    try:
        stop.wait()  # the stack's supervisor restarts what dies and reports configuration errors
    finally:
        codes = stack.stop()
        print(f"heatcache stopped: {codes}", flush=True)
    return 0


def cmd_console(settings: Settings, _args: argparse.Namespace) -> int:
    from console.server import check_bind, run_console

    try:
        check_bind(settings)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return run_console(settings, _bootstrap(settings))


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    from console.status import run_status

    try:
        return run_status(settings, settings.kafka_bootstrap, as_json=args.json, watch=args.watch,
                          interval=args.interval)
    except RuntimeError as exc:
        raise UsageError(str(exc)) from None


def cmd_control(settings: Settings, args: argparse.Namespace) -> int:
    """Operator switches and purges: the same code (console.actions) as the console's buttons."""
    import json

    from console.actions import ActionError, Actions, parse_action
    from console.feed import open_catalog_rows
    from heatcache.kafkautil import producer

    words = {"pause": "paused", "resume": "running", "stop": "stopped", "start": "running", "unpin": "none"}
    what, rest = args.what, list(args.args)
    if what in ("prefetch", "steering"):
        body = {"action": what, "value": words.get(rest[0], rest[0]) if rest else ""}
    elif what == "pin":
        if len(rest) != 2:
            raise UsageError("usage: heatcache control pin URL|HOST always|never|none")
        body = {"action": "pin-url" if "://" in rest[0] else "pin-host", "subject": rest[0],
                "value": words.get(rest[1], rest[1])}
    elif what == "purge":
        if len(rest) != 1:
            raise UsageError("usage: heatcache control purge URL | --prefix URL | --host HOST")
        kind = "purge-prefix" if args.prefix else "purge-host" if args.host else "purge-url"
        body = {"action": kind, "subject": rest[0]}
    else:
        raise UsageError("heatcache control prefetch pause|resume | steering stop|start | pin X VALUE | purge X")
    rows = open_catalog_rows(settings)
    try:
        action = parse_action(body, by=f"cli@{settings.node_name}")
        prod = producer(_bootstrap(settings), settings) if action.kind != "purge-url" else None
        result = Actions(settings, prod, rows).run(action)
    except ActionError as exc:
        raise UsageError(str(exc)) from None
    finally:
        rows.close()  # type: ignore[attr-defined]
    print(json.dumps(result))
    return 0 if result.get("ok") else 1


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from heatcache.demo import run_demo

    return run_demo(settings, verbose=args.verbose)


# -- replay (issue 19): trace import and replay
def cmd_trace(settings: Settings, args: argparse.Namespace) -> int:
    from replay.cli import cmd_trace as run

    return run(settings, args, _bootstrap(settings) if args.trace_command == "import" else "")


def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    from replay.cli import cmd_replay as run

    return run(settings, args)


def _replay_args(name: str, p: argparse.ArgumentParser) -> None:
    from replay import cli as replay_cli

    if name == "trace":
        replay_cli.add_trace_args(p)
    elif name == "replay":
        replay_cli.add_replay_args(p)


def cmd_purge(settings: Settings, args: argparse.Namespace) -> int:
    """Purge cached objects by URL, URL prefix or host through the cache store; each announced on
    `cache-events` (acknowledged by the broker before the command returns)."""
    from cachestore import open_store
    from cachestore.catalog import open_catalog
    from heatcache import contract
    from heatcache.cachekey import BadUrl, KeyRules, cache_key
    from heatcache.kafkautil import producer

    target = args.target
    catalog = open_catalog(settings.catalog)
    try:
        store = open_store(settings, catalog)
        if args.host:
            events = store.purge(host=target)
        elif args.prefix:
            events = store.purge(prefix=target)
        else:
            scheme, _, rest = target.partition("://")
            authority, slash, tail = rest.partition("/")
            try:
                key = cache_key(authority, slash + tail if slash else "/", KeyRules.load(settings.cache_key_rules),
                                scheme or "http")
            except BadUrl as exc:
                raise UsageError(f"not a URL: {exc}") from exc
            events = store.purge(key=key)
    finally:
        catalog.close()
    prod = producer(_bootstrap(settings), settings)
    failed: list[str] = []
    for event in events:
        prod.produce(settings.topic(contract.CACHE_EVENTS), key=event.cache_key.encode(),
                     value=contract.encode(event),
                     on_delivery=lambda err, msg: failed.append(str(err)) if err is not None else None)
    left = prod.flush(30)
    for event in events:
        print(f"purged {event.cache_key} ({event.size} bytes)")
    print(f"{len(events)} object(s) purged")
    if left or failed:
        print(f"warning: {left + len(failed)} purge event(s) not acknowledged by the broker", file=sys.stderr)
        return 1
    return 0


COMMANDS: dict[str, tuple[Callable[[Settings, argparse.Namespace], int], str]] = {
    "sniff": (cmd_sniff, "capture HTTP requests and publish them to Kafka"),
    "streams": (cmd_streams, "the Faust app: windowed heat, hot-url emission"),
    "fetch": (cmd_fetch, "fetch hot URLs through aria2c into the cache"),
    "policy-proxy": (cmd_policy_proxy, "the address-policy proxy in front of aria2c, as its own process"),
    "dns": (cmd_dns, "DNS server steering cached hosts to the cache node"),
    "edge": (cmd_edge, "edge HTTP server: hits from disk, misses passed through"),
    "nginx-conf": (cmd_nginx_conf, "print the nginx server block to put nginx in front of the edge"),
    "broker": (cmd_broker, "run the embedded single-node Kafka broker alone"),
    "up": (cmd_up, "run the whole stack locally (embedded Kafka, aria2c, every stage)"),
    "demo": (cmd_demo, "the stack plus a sample origin and clients; prints what happened"),
    "console": (cmd_console, "the operator's live web page (HEATCACHE_CONSOLE_HOST/PORT)"),
    "status": (cmd_status, "what the stack does now, in the terminal (--watch, --json)"),
    "purge": (cmd_purge, "purge cached objects by URL, --prefix URL or --host HOST (announced on cache-events)"),
    "control": (cmd_control, "prefetch pause|resume, steering stop|start, pin X always|never|none, purge X"),
    "trace": (cmd_trace, "trace import FILE: load an access log or capture into the requests topic; "
                         "trace generate NAME FILE: write a named generated trace as CSV"),
    "replay": (cmd_replay, "run the production decisions over recorded traffic and report what they save"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="heatcache", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_fn, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name == "purge":
            p.add_argument("target", help="a URL (its cache key), a URL prefix with --prefix, a host with --host")
            group = p.add_mutually_exclusive_group()
            group.add_argument("--prefix", action="store_true", help="every cached URL starting with TARGET")
            group.add_argument("--host", action="store_true", help="every cached URL of host TARGET")
        if name == "up":
            p.add_argument("--without", action="append",
                           choices=["streams", "fetch", "dns", "edge", "sniff", "console"],
                           help="leave a stage out (repeatable)")
        if name == "nginx-conf":
            p.add_argument("--listen", default="80", help="nginx's listen directive (default 80)")
        if name == "demo":
            p.add_argument("--verbose", action="store_true", help="show every stage's log lines")
        if name == "status":
            p.add_argument("--json", action="store_true", help="one JSON snapshot, for scripts")
            p.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
            p.add_argument("--interval", type=float, default=2.0, help="refresh interval in seconds")
        if name == "control":
            p.add_argument("what", choices=["prefetch", "steering", "pin", "purge"])
            p.add_argument("args", nargs="*")
            p.add_argument("--prefix", action="store_true", help="purge: every cached URL under this prefix")
            p.add_argument("--host", action="store_true", help="purge: every cached URL of this host")
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
