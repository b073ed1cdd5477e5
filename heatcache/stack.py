"""The local stack and its supervisor: embedded Kafka (unless a bootstrap is configured), aria2c,
the fetcher's address-policy proxy (its own process, so a fetcher restart cuts no download),
and every stage as a child process with prefixed, readable logs; stopped in reverse order on
Ctrl-C/SIGTERM.

Supervision: a stage, aria2c, the policy proxy or the broker that dies is started again with back-off
(0.5 s doubling to 30 s, reset after a minute of running), logged, while the others keep
serving. A stage that exits with the runner's configuration-error status (78) is reported and
not restarted; one that finishes with 0 (a sniffer reading a capture file) is done.
Children die with ``up`` (``setpriv --pdeathsig``), and ``<state_dir>/stack.pids.json`` lets the
next start stop whatever a kill -9 of ``up`` left behind. A port held by a foreign process is
an error naming that process.

Children get the stack's settings through the environment (``HEATCACHE_*``), so each builds the
same frozen Settings at its own start-up.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from pydantic import SecretStr

from heatcache.lifecycle import READY_MARK
from heatcache.netutil import port_is_free
from heatcache.runner import EX_CONFIG, ConfigError
from heatcache.services.aria2 import Aria2Daemon
from heatcache.services.kafka import EmbeddedKafka, ensure_topics
from heatcache.services.policyproxy import PolicyProxyDaemon
from heatcache.services.procs import ChildRecord, port_owner, with_parent_death
from heatcache.settings import Settings, default_secrets

log = logging.getLogger(__name__)

STAGES = ("streams", "fetch", "dns", "edge", "sniff", "console")
STAGE_SECRETS = {"sniff": ("client_id_secret",), "fetch": ("aria2_secret",)}
STABLE_S = 60.0  # a child that ran this long starts its back-off from the beginning again


class PortTaken(RuntimeError):
    """A port the stack needs is held by another process (named in the message)."""


def settings_env(settings: Settings) -> dict[str, str]:
    """Settings as HEATCACHE_* variables (the inverse of reading them)."""
    env = {}
    for name in type(settings).model_fields:
        value: Any = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, tuple):
            value = ",".join(map(str, value))
        elif isinstance(value, SecretStr):  # children need the value itself, never logged
            value = value.get_secret_value()
        elif isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, SecretStr):  # children need the secret itself, not its mask
            value = value.get_secret_value()
        env[f"HEATCACHE_{name.upper()}"] = str(value)
    return env


def restart_delay(restarts: int) -> float:
    """Back-off before restart number ``restarts`` + 1 (pure)."""
    return float(min(30.0, 0.5 * 2 ** min(restarts, 10)))


def after_exit(code: int | None, restarts: int) -> tuple[str, float]:
    """What the supervisor does when a child exits with ``code`` (pure): ("config", 0) for the
    runner's configuration-error status, ("done", 0) for a clean finish, else ("restart", delay)."""
    if code == EX_CONFIG:
        return "config", 0.0
    if code == 0:
        return "done", 0.0
    return "restart", restart_delay(restarts)


class StageProcess:
    """One stage child: its output goes to the console (prefixed) and to logs/<stage>.log."""

    def __init__(self, stage: str, env: Mapping[str, str], log_dir: Path, console: TextIO | None) -> None:
        self.stage = stage
        self.ready = threading.Event()
        self.log_path = log_dir / f"{stage}.log"
        self.console = console
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            with_parent_death([sys.executable, "-m", "heatcache.cli", stage]), env=dict(env),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self._pump = threading.Thread(target=self._read, name=f"log-{stage}", daemon=True)
        self._pump.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with open(self.log_path, "ab") as out:
            for line in self.proc.stdout:
                out.write(line)
                out.flush()
                text = line.decode("utf-8", "replace").rstrip()
                if READY_MARK in text:
                    self.ready.set()
                if self.console is not None:
                    self.console.write(f"[{self.stage:>7}] {text}\n")
                    self.console.flush()

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs, killing it", self.stage, timeout)
                self.proc.kill()
                self.proc.wait()
        self.close()
        return self.proc.returncode

    def close(self) -> None:
        self._pump.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@dataclass
class _Watch:
    """Restart state of one supervised child."""

    restarts: int = 0
    due: float = 0.0  # monotonic time of the pending restart (0 = none pending)
    state: str = "running"  # running / restarting / config / done


class Stack:
    """Everything `heatcache up` runs. Use as a context manager or call start()/stop()."""

    def __init__(self, settings: Settings, stages: Iterable[str] = STAGES, console: TextIO | None = sys.stdout,
                 supervise: bool = True) -> None:
        self.settings = settings
        self.stages = [s for s in STAGES if s in set(stages)]
        self.console = console
        self.state_dir = settings.state_dir.resolve()
        self.broker: EmbeddedKafka | None = None
        self.aria2: Aria2Daemon | None = None
        self.proxy: PolicyProxyDaemon | None = None  # the fetcher's address-policy proxy (own process)
        self.children: dict[str, StageProcess] = {}
        self.bootstrap = settings.kafka_bootstrap
        self.supervise = supervise
        self.record = ChildRecord(self.state_dir / "stack.pids.json")
        self.watch: dict[str, _Watch] = {}
        self.events: list[str] = []  # what the supervisor did, for `up`'s console and tests
        self._env: dict[str, str] = {}
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- start
    def preflight(self) -> None:
        """Refuse the shipped secrets and ports held by someone else, before starting anything."""
        s = self.settings
        names = [n for stage in self.stages for n in STAGE_SECRETS.get(stage, ())]
        bad = default_secrets(s, names)
        if bad:
            raise ConfigError(f"{', '.join(bad)} still hold the shipped default secret: set your own "
                              "(or HEATCACHE_LAB_MODE=true on a lab machine)")
        wanted: list[tuple[int, str, str]] = []
        if not self.bootstrap and s.kafka_port:
            wanted.append((s.kafka_port, "127.0.0.1", "HEATCACHE_KAFKA_PORT (embedded Kafka)"))
        if "fetch" in self.stages and s.aria2_rpc_port:
            wanted.append((s.aria2_rpc_port, "127.0.0.1", "HEATCACHE_ARIA2_RPC_PORT (aria2c)"))
        if "fetch" in self.stages and s.policy_proxy_port:
            wanted.append((s.policy_proxy_port, "127.0.0.1", "HEATCACHE_POLICY_PROXY_PORT (policy proxy)"))
        if "edge" in self.stages and s.edge_port:
            wanted.append((s.edge_port, s.edge_host, "HEATCACHE_EDGE_PORT (edge)"))
        if "dns" in self.stages and s.dns_port:
            wanted.append((s.dns_port, s.dns_host, "HEATCACHE_DNS_PORT (DNS, TCP)"))
        if s.metrics_port:
            wanted += [(s.metrics_port + STAGES.index(st), "0.0.0.0", f"metrics port of {st}") for st in self.stages]
        for port, host, what in wanted:
            if not port_is_free(port, host):
                owner = port_owner(port) or "another process"
                raise PortTaken(f"port {port} for {what} is held by {owner}")

    def start(self, ready_timeout: float = 120.0) -> Stack:
        s = self.settings
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        self.record.claim()  # refuses a running `up`; stops what a killed one left behind
        try:
            self.preflight()
            if not self.bootstrap:
                self.broker = EmbeddedKafka(self.state_dir / "kafka", s.kafka_port, s.kafka_heap_mb)
                self.bootstrap = self.broker.start()
                self._recorded("kafka", self.broker.proc)
                log.info("Kafka broker up at %s", self.bootstrap)
            ensure_topics(self.bootstrap, s)
            self._env = {**os.environ, **settings_env(s), "HEATCACHE_KAFKA_BOOTSTRAP": self.bootstrap,
                         "PYTHONUNBUFFERED": "1"}
            if not s.fetch_instance_id:  # one fetcher per stack: static membership, a restart resumes at once
                self._env["HEATCACHE_FETCH_INSTANCE_ID"] = f"{s.node_name}-fetch"
            if "fetch" in self.stages:
                self.aria2 = Aria2Daemon(self.state_dir / "aria2", s.aria2_secret.get_secret_value(),
                                         s.aria2_rpc_port, s.outbound_address)
                self._env["HEATCACHE_ARIA2_RPC_PORT"] = str(self.aria2.start())
                self._recorded("aria2c", self.aria2.proc)
                # the proxy aria2c's requests go through, outside the fetcher: a fetcher restart
                # leaves the running downloads on their connections
                self.proxy = PolicyProxyDaemon(self.state_dir / "aria2", self._env, s.policy_proxy_port)
                self._env["HEATCACHE_POLICY_PROXY_PORT"] = str(self.proxy.start())
                self._recorded("policy-proxy", self.proxy.proc)
            for stage in self.stages:
                self._start_stage(stage)
            self.wait_ready(ready_timeout)
        except BaseException:
            self.stop()
            raise
        if self.supervise:
            self._supervisor = threading.Thread(target=self._supervise, name="supervisor", daemon=True)
            self._supervisor.start()
        return self

    def _recorded(self, name: str, proc: subprocess.Popen[bytes] | None) -> None:
        if proc is not None:
            self.record.add(name, proc.pid)
        self.watch.setdefault(name, _Watch())

    def _start_stage(self, stage: str) -> StageProcess:
        env = self._env
        if self.settings.metrics_port:  # one /metrics port per stage process: base + its place in STAGES
            env = {**env, "HEATCACHE_METRICS_PORT": str(self.settings.metrics_port + STAGES.index(stage))}
        child = StageProcess(stage, env, self.state_dir / "logs", self.console)
        self.children[stage] = child
        self._recorded(stage, child.proc)
        return child

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for stage, child in self.children.items():
            while not child.ready.wait(0.2):
                if child.proc.poll() is not None:
                    code = child.proc.returncode
                    why = "a configuration error" if code == EX_CONFIG else f"status {code}"
                    raise RuntimeError(f"stage {stage} exited with {why}; see {child.log_path}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"stage {stage} not ready after {timeout:.0f}s; see {child.log_path}")

    # -- supervision
    def _note(self, message: str, level: int = logging.WARNING) -> None:
        log.log(level, "%s", message)
        self.events.append(message)
        if self.console is not None:
            self.console.write(f"[     up] {message}\n")
            self.console.flush()

    def _supervise(self) -> None:
        while not self._stopping.wait(0.25):
            try:
                self.check()
            except Exception:
                log.exception("supervisor check failed")

    def check(self, now: float | None = None) -> None:
        """One supervision pass: notice dead children, restart those that are due."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if self._stopping.is_set():
                return
            if self.broker is not None:
                self._check_service("kafka", self.broker.proc, self._restart_broker, now)
            if self.aria2 is not None:
                self._check_service("aria2c", self.aria2.proc, self._restart_aria2, now)
            if self.proxy is not None:
                self._check_service("policy-proxy", self.proxy.proc, self._restart_proxy, now)
            for stage in list(self.children):
                child = self.children[stage]
                self._check_service(stage, child.proc, functools.partial(self._restart_stage, stage), now,
                                    started=child.started)

    def _check_service(self, name: str, proc: subprocess.Popen[bytes] | None, restart: Callable[[], None],
                       now: float, started: float | None = None) -> None:
        w = self.watch.setdefault(name, _Watch())
        if w.state in ("config", "done"):
            return
        if w.state == "running":
            code = proc.poll() if proc is not None else -1
            if code is None:
                if started is not None and now - started > STABLE_S:
                    w.restarts = 0
                return
            action, delay = after_exit(code, w.restarts) if name in self.children else ("restart",
                                                                                       restart_delay(w.restarts))
            if action == "config":
                w.state = "config"
                self._note(f"{name} exited with a configuration error (status {EX_CONFIG}): not restarting; "
                           f"see {self.state_dir / 'logs' / (name + '.log')}", logging.ERROR)
                return
            if action == "done":
                w.state = "done"
                self._note(f"{name} finished (status 0)", logging.INFO)
                return
            w.state, w.due = "restarting", now + delay
            self._note(f"{name} exited with status {code}; restarting in {delay:.1f}s (restart {w.restarts + 1})")
            return
        if now >= w.due:
            try:
                restart()
                w.state = "running"
                w.restarts += 1
                self._note(f"{name} restarted", logging.INFO)
            except Exception as exc:
                w.restarts += 1
                delay = restart_delay(w.restarts)
                w.due = now + delay
                self._note(f"restarting {name} failed ({exc}); next try in {delay:.1f}s")

    def _restart_stage(self, stage: str) -> None:
        old = self.children[stage]
        old.close()
        self._start_stage(stage)

    def _restart_aria2(self) -> None:
        assert self.aria2 is not None
        self.aria2.proc = None
        self.aria2.start()
        self._recorded("aria2c", self.aria2.proc)

    def _restart_proxy(self) -> None:
        assert self.proxy is not None
        self.proxy.proc = None
        self.proxy.start()  # the same port: aria2c's downloads retry into it
        self._recorded("policy-proxy", self.proxy.proc)

    def _restart_broker(self) -> None:
        assert self.broker is not None
        before = self.bootstrap
        self.broker.proc = None
        self.bootstrap = self.broker.start()
        self._recorded("kafka", self.broker.proc)
        if self.bootstrap != before:  # its old port was taken meanwhile: stages must reconnect
            self._note(f"Kafka came back at {self.bootstrap} (was {before}): restarting every stage")
            self._env["HEATCACHE_KAFKA_BOOTSTRAP"] = self.bootstrap
            for child in self.children.values():
                child.stop()

    def failed(self) -> list[str]:
        """Stages that stopped for good (configuration error)."""
        return [name for name, w in self.watch.items() if w.state == "config"]

    # -- stop
    def stop(self) -> dict[str, int | None]:
        self._stopping.set()
        with self._lock:
            codes = {}
            for stage in reversed(list(self.children)):  # sniffer first: producers stop before consumers
                codes[stage] = self.children[stage].stop()
                self.record.remove(stage)
            self.children.clear()
            if self.proxy is not None:
                self.proxy.stop()
                self.proxy = None
            if self.aria2 is not None:
                self.aria2.stop()
                self.aria2 = None
            if self.broker is not None:
                self.broker.stop()
                self.broker = None
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join(5)
        self.record.release()
        return codes

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
