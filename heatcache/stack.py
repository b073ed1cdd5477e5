"""The local stack: embedded Kafka (unless a bootstrap is configured), aria2c, and every stage
as a child process with prefixed, readable logs; stopped in reverse order on Ctrl-C/SIGTERM.

Children get the stack's settings through the environment (``HEATCACHE_*``), so each builds the
same frozen Settings at its own start-up.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TextIO

from pydantic import SecretStr

from heatcache.lifecycle import READY_MARK
from heatcache.services.aria2 import Aria2Daemon
from heatcache.services.kafka import EmbeddedKafka, ensure_topics
from heatcache.settings import Settings

log = logging.getLogger(__name__)

STAGES = ("streams", "fetch", "dns", "edge", "sniff", "console")


def settings_env(settings: Settings) -> dict[str, str]:
    """Settings as HEATCACHE_* variables (the inverse of reading them)."""
    env = {}
    for name in type(settings).model_fields:
        value: Any = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, tuple):
            value = ",".join(map(str, value))
        elif isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, SecretStr):  # children need the secret itself, not its mask
            value = value.get_secret_value()
        env[f"HEATCACHE_{name.upper()}"] = str(value)
    return env


class StageProcess:
    """One stage child: its output goes to the console (prefixed) and to logs/<stage>.log."""

    def __init__(self, stage: str, env: Mapping[str, str], log_dir: Path, console: TextIO | None) -> None:
        self.stage = stage
        self.ready = threading.Event()
        self.log_path = log_dir / f"{stage}.log"
        self.console = console
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "heatcache.cli", stage], env=dict(env), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True,
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
        self._pump.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


class Stack:
    """Everything `heatcache up` runs. Use as a context manager or call start()/stop()."""

    def __init__(self, settings: Settings, stages: Iterable[str] = STAGES, console: TextIO | None = sys.stdout) -> None:
        self.settings = settings
        self.stages = [s for s in STAGES if s in set(stages)]
        self.console = console
        self.state_dir = settings.state_dir.resolve()
        self.broker: EmbeddedKafka | None = None
        self.aria2: Aria2Daemon | None = None
        self.children: dict[str, StageProcess] = {}
        self.bootstrap = settings.kafka_bootstrap

    def start(self, ready_timeout: float = 120.0) -> Stack:
        s = self.settings
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        try:
            if not self.bootstrap:
                self.broker = EmbeddedKafka(self.state_dir / "kafka", s.kafka_port, s.kafka_heap_mb)
                self.bootstrap = self.broker.start()
                log.info("Kafka %s up at %s", "broker", self.bootstrap)
            ensure_topics(self.bootstrap, s)
            env = {**os.environ, **settings_env(s), "HEATCACHE_KAFKA_BOOTSTRAP": self.bootstrap,
                   "PYTHONUNBUFFERED": "1"}
            if "fetch" in self.stages:
                self.aria2 = Aria2Daemon(self.state_dir / "aria2", s.aria2_secret, s.aria2_rpc_port,
                                         s.outbound_address)
                env["HEATCACHE_ARIA2_RPC_PORT"] = str(self.aria2.start())
            for stage in self.stages:
                stage_env = env
                if s.metrics_port:  # one /metrics port per stage process: base + its place in STAGES
                    stage_env = {**env, "HEATCACHE_METRICS_PORT": str(s.metrics_port + STAGES.index(stage))}
                self.children[stage] = StageProcess(stage, stage_env, self.state_dir / "logs", self.console)
            self.wait_ready(ready_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for stage, child in self.children.items():
            while not child.ready.wait(0.2):
                if child.proc.poll() is not None:
                    raise RuntimeError(f"stage {stage} exited with {child.proc.returncode}; see {child.log_path}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"stage {stage} not ready after {timeout:.0f}s; see {child.log_path}")

    def failed(self) -> list[str]:
        return [name for name, c in self.children.items() if c.proc.poll() is not None]

    def stop(self) -> dict[str, int | None]:
        codes = {}
        for stage in reversed(list(self.children)):  # sniffer first: producers stop before consumers
            codes[stage] = self.children[stage].stop()
        self.children.clear()
        if self.aria2 is not None:
            self.aria2.stop()
            self.aria2 = None
        if self.broker is not None:
            self.broker.stop()
            self.broker = None
        return codes

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
