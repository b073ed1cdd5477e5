"""The one stage runner: every long-running stage starts, reports ready, serves metrics, keeps a
health state and stops the same way; plus the one consumer loop with the one error policy.

A stage is a function of the runner::

    def main(run: Runner) -> None:           # or: async def main(run: Runner) -> None
        ...set up; raise ConfigError("...") for what the operator must fix
        run.ready()                           # prints READY_MARK: `heatcache up` and tests wait on it
        while not run.stop.is_set(): ...      # async: await run.stopped()

    return Runner(settings, SPEC).run(main)  # or .run_async(main); the exit status

What the runner does around it:
- SIGTERM/SIGINT set ``run.stop`` (callbacks with ``run.stop.on_stop``); if the stage has not
  returned ``settings.stop_deadline_s`` later, its long work is interrupted (StopDeadline raised
  in the main thread, or the async main task cancelled), and a few seconds after that the process
  exits hard. A stop never waits for an orchestrator's SIGKILL.
- :class:`ConfigError` -> exit status :data:`EX_CONFIG` (78): a supervisor must not restart it.
  Any other exception -> exit status 1 (restart with back-off).
- ``/metrics`` (Prometheus) and ``/health`` (JSON) on ``settings.metrics_port`` (0 = off; a stage
  may serve more JSON there, ``Runner.views``), and a
  snapshot of the same declared metrics on the `metrics` topic every ``metrics_interval_s``
  (see heatcache/metrics.py for the scheme).
- ``run.health``: ``degraded(dependency, reason)`` / ``ok(dependency)`` for lost dependencies;
  a stage never exits because the broker, the database or aria2c went away.
- ``run.kafka_error_cb``: the ``error_cb`` for a stage's confluent-kafka clients. A lost broker
  makes the stage degraded("broker"); librdkafka says nothing when the broker is back, so while
  it is lost the runner asks it for metadata about once a second and marks it ok when it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from heatcache import contract, kafkautil
from heatcache.lifecycle import StopFlag, announce_ready
from heatcache.metrics import StageMetrics, StageSpec, registry_for
from heatcache.settings import Settings, default_secrets

log = logging.getLogger("heatcache.runner")

EX_CONFIG = 78  # sysexits.h EX_CONFIG: a configuration error; restarting cannot help
EX_FAILED = 1


class ConfigError(RuntimeError):
    """The stage cannot run with this configuration: exit EX_CONFIG, do not restart."""


class StopDeadline(BaseException):
    """Raised in the main thread when a stop took longer than the deadline (not an Exception, so
    ``except Exception`` in stage code does not swallow it)."""


class Health:
    """ok, or degraded with the reasons of each lost dependency (thread-safe)."""

    def __init__(self, metrics: StageMetrics | None = None) -> None:
        self._lost: dict[str, str] = {}
        self._lock = threading.Lock()
        self._metrics = metrics
        self._set_gauge()

    def degraded(self, dependency: str, reason: str) -> None:
        with self._lock:
            first = dependency not in self._lost
            self._lost[dependency] = reason
        if first:
            log.warning("degraded: %s: %s", dependency, reason)
        self._set_gauge()

    def ok(self, dependency: str) -> None:
        with self._lock:
            was = self._lost.pop(dependency, None)
        if was is not None:
            log.warning("recovered: %s", dependency)
        self._set_gauge()

    def lost(self, dependency: str) -> bool:
        with self._lock:
            return dependency in self._lost

    def state(self) -> tuple[str, str]:
        """("ok", "") or ("degraded", "broker: ...; catalog: ...")."""
        with self._lock:
            if not self._lost:
                return "ok", ""
            return "degraded", "; ".join(f"{d}: {r}" for d, r in sorted(self._lost.items()))

    def _set_gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.counters["healthy"] = 0 if self._lost else 1


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[[], object]) -> None:
    with contextlib.suppress(RuntimeError):  # the loop already closed: nothing left to wake
        loop.call_soon_threadsafe(fn)


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class Runner:
    """Runs one stage: see the module docstring."""

    def __init__(self, settings: Settings, spec: StageSpec, counters: Counter[str] | None = None,
                 bootstrap: str | None = None, secrets: Iterable[str] = ()) -> None:
        self.settings = settings
        self.secrets = tuple(secrets)  # settings that must not hold the shipped default (ConfigError)
        self.stage = spec.stage
        self.metrics = StageMetrics(spec, counters)
        self.counters = self.metrics.counters
        self.metrics.counters["start-time"] = int(time.time())
        self.health = Health(self.metrics)
        self.stop = StopFlag()
        self.bootstrap = settings.kafka_bootstrap if bootstrap is None else bootstrap
        self._ready = False
        self._http: ThreadingWSGIServer | None = None
        self._producer: Producer | None = None
        self._snapshots: threading.Thread | None = None
        self._main_thread = threading.main_thread()
        self._interrupt: Callable[[], None] | None = None
        self._finished = threading.Event()  # set once the stage has returned
        self._probe: threading.Thread | None = None  # asks a lost broker whether it is back
        self._probe_lock = threading.Lock()
        # more JSON a stage serves on the metrics port: path -> the body as of now (None: not yet);
        # called on the HTTP thread, so a stage hands over bytes it built on its own thread
        self.views: dict[str, Callable[[], bytes | None]] = {}

    # -- what stages call
    def ready(self) -> None:
        """Announce readiness once (the line `heatcache up` and the tests wait for)."""
        if not self._ready:
            self._ready = True
            announce_ready(self.stage)

    @property
    def is_ready(self) -> bool:
        return self._ready

    async def stopped(self) -> None:
        """Await until the stage is told to stop (asyncio stages)."""
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        self.stop.on_stop(lambda: _call_soon(loop, event.set))
        if self.stop.is_set():
            return
        await event.wait()

    def sleep(self, seconds: float) -> bool:
        """Sleep unless stopped first; True if stopped (for back-off loops)."""
        return self.stop.wait(seconds)

    def kafka_error_cb(self, err: KafkaError) -> None:
        """confluent-kafka ``error_cb``: a lost broker is a degraded state, not a crash."""
        self.counters["broker.errors"] += 1
        if err.code() in kafkautil.BROKER_LOST:
            self.health.degraded("broker", err.str())
            self._probe_broker()
        else:
            log.warning("kafka: %s", err.str())

    def _probe_broker(self, every_s: float = 1.0) -> None:
        """Start (once) the thread that marks the broker ok again when it answers a metadata
        request: no client callback says so, and a stage with nothing to send would stay degraded."""
        with self._probe_lock:
            if not self.bootstrap or (self._probe is not None and self._probe.is_alive()):
                return

            def probe() -> None:
                client = kafkautil.admin_quiet(self.bootstrap, self.settings)
                while self.health.lost("broker") and not self._finished.is_set():
                    try:
                        client.list_topics(timeout=2 * every_s)
                    except KafkaException:
                        self._finished.wait(every_s)
                        continue
                    self.health.ok("broker")

            self._probe = threading.Thread(target=probe, name="broker-probe", daemon=True)
            self._probe.start()

    # -- running
    def run(self, main: Callable[[Runner], None], *, install_signals: bool = True) -> int:
        """Run a synchronous stage; the exit status. ``install_signals=False`` for stages whose
        framework handles signals itself (Faust's worker): then call ``run.stop.set()`` from it."""
        self._interrupt = self._raise_in_main
        return self._guarded(lambda: main(self), install_signals)

    def run_async(self, main: Callable[[Runner], Awaitable[None]], *, install_signals: bool = True) -> int:
        """Run an asyncio stage under uvloop; the deadline cancels its main task."""

        async def wrapper() -> None:
            task = asyncio.current_task()
            loop = asyncio.get_running_loop()
            assert task is not None
            self._interrupt = lambda: _call_soon(loop, task.cancel)
            try:
                await main(self)
            except asyncio.CancelledError:
                if not self.stop.is_set():
                    raise
                raise StopDeadline from None

        import uvloop  # libuv's loop: more DNS answers and edge hits per core

        return self._guarded(lambda: uvloop.run(wrapper()), install_signals)

    def _guarded(self, body: Callable[[], None], install_signals: bool) -> int:
        if install_signals:
            self.stop.install()
            signal.signal(signal.SIGUSR1, self._on_deadline_signal)
        self.stop.on_stop(self._arm_deadline)
        code = 0
        try:
            bad = default_secrets(self.settings, self.secrets)
            if bad:
                raise ConfigError(f"{', '.join(bad)} still hold the shipped default secret: set your own "
                                  "(or HEATCACHE_LAB_MODE=true on a lab machine)")
            self._start_outputs()
            body()
        except ConfigError as exc:
            log.error("configuration error (not restarting helps): %s", exc)
            code = EX_CONFIG
        except StopDeadline:
            log.error("%s did not stop within %.0fs: interrupted", self.stage, self.settings.stop_deadline_s)
            code = EX_FAILED
        except KeyboardInterrupt:
            code = 0
        except Exception:
            log.exception("%s failed", self.stage)
            code = EX_FAILED
        finally:
            self.stop.set()
            self._stop_outputs()
        return code

    # -- stop deadline
    def _arm_deadline(self) -> None:
        deadline = self.settings.stop_deadline_s

        def watchdog() -> None:
            if self._finished.wait(deadline):
                return
            log.error("stop deadline of %.0fs passed: interrupting %s", deadline, self.stage)
            if self._interrupt is not None:
                self._interrupt()
            if self._finished.wait(3.0):
                return
            log.error("%s still running: exiting now", self.stage)
            logging.shutdown()
            os._exit(EX_FAILED)

        threading.Thread(target=watchdog, name="stop-deadline", daemon=True).start()

    def _raise_in_main(self) -> None:
        # a real signal interrupts a blocking system call in the main thread; its handler raises
        signal.pthread_kill(self._main_thread.ident or 0, signal.SIGUSR1)

    def _on_deadline_signal(self, _signum: int, _frame: object) -> None:
        if self.stop.is_set():
            raise StopDeadline

    # -- metrics outputs
    def _start_outputs(self) -> None:
        s = self.settings
        if s.metrics_port:
            self._http = make_server(s.metrics_bind, s.metrics_port, self._wsgi, ThreadingWSGIServer,
                                     handler_class=_Quiet)
            self._http.daemon_threads = True
            threading.Thread(target=self._http.serve_forever, name="metrics-http", daemon=True).start()
        if self.bootstrap and s.metrics_interval_s > 0:
            self._producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 100,
                                       "message.timeout.ms": max(1000, int(s.metrics_interval_s * 3000)),
                                       "error_cb": lambda _e: None,  # the stage's own clients report health
                                       # nor its connection logs: while no broker answers they were
                                       # ~20 lines a second in the stage's log
                                       "log_level": 0,
                                       **kafkautil.client_config(s)})
            self._snapshots = threading.Thread(target=self._snapshot_loop, name="metrics-snapshots", daemon=True)
            self._snapshots.start()

    def _wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/health":
            state, reason = self.health.state()
            body = orjson.dumps({"stage": self.stage, "ready": self._ready, "health": state, "reason": reason})
            start_response("200 OK" if state == "ok" else "503 Service Unavailable",
                           [("Content-Type", "application/json")])
            return [body]
        view = self.views.get(environ.get("PATH_INFO", ""))
        if view is not None:
            served = view()
            start_response("200 OK" if served is not None else "503 Service Unavailable",
                           [("Content-Type", "application/json")])
            return [served if served is not None else b'{"error": "not yet"}']
        return self._prom(environ, start_response)  # type: ignore[no-any-return]

    @property
    def _prom(self) -> Callable[..., Any]:
        app = getattr(self, "_prom_app", None)
        if app is None:
            app = self._prom_app = make_wsgi_app(registry_for(self.metrics))
        return app  # type: ignore[no-any-return]

    def snapshot(self) -> dict[str, Any]:
        """The `metrics` record as of now (one flat object, the stage's fixed field set)."""
        state, reason = self.health.state()
        return self.metrics.snapshot(self.settings.node_name, time.time(), state, reason)

    def _publish_snapshot(self) -> None:
        if self._producer is None:
            return
        try:
            self._producer.produce(self.settings.topic(contract.METRICS), key=self.stage.encode(),
                                   value=orjson.dumps(self.snapshot()))
        except BufferError:
            pass  # the broker is away and the queue is full: the next snapshot supersedes this one
        self._producer.poll(0)

    def _snapshot_loop(self) -> None:
        while not self._finished.wait(self.settings.metrics_interval_s if self._ready else 0.5):
            if self._ready:  # the first snapshot once the stage is up, then every interval
                self._publish_snapshot()

    def _stop_outputs(self) -> None:
        self._finished.set()
        if self._snapshots is not None:
            self._snapshots.join(5)
        if self._producer is not None:
            self._publish_snapshot()
            self._producer.flush(2)
            self._producer = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


# -- the consumer loop and its error policy -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Output:
    """A record a handled message produces; its offset is stored once all are acknowledged."""

    topic: str
    key: bytes | None
    value: bytes | None


class Retry(Exception):
    """Raised by a handler when a dependency is lost (database, aria2c, ...): the runner marks
    the stage degraded, backs off and hands the same message in again; never a dead letter."""

    def __init__(self, dependency: str, reason: str) -> None:
        super().__init__(f"{dependency}: {reason}")
        self.dependency = dependency
        self.reason = reason


class _Tracked:
    __slots__ = ("offset", "pending", "records")

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.pending = 0
        self.records: list[Output] = []


class ConsumerLoop:
    """Consume, handle, produce, store offsets, with the one error policy:

    - ``handle(msg)`` returns the records the message produces, after recording its side effects
      (catalog rows, files). An exception from it -> the message goes to `dead-letter` with the
      reason (``Type: message``) and the loop goes on; :class:`Retry` -> back-off, same message.
    - Every produced record's delivery report is checked; a failed delivery is produced again
      (with back-off) until the broker acknowledges it: results are never dropped.
    - A message's offset is stored (and so auto-committed) only once every record it produced is
      acknowledged, and in order per partition: a crash redelivers, never skips (at-least-once;
      handlers are idempotent per key).
    - A lost broker marks the stage degraded; librdkafka reconnects; the loop keeps going.

    Use a consumer from :func:`heatcache.kafkautil.consumer` (auto-commit on, offset store off).
    """

    def __init__(self, run: Runner, consumer: Consumer, producer: Producer,
                 handle: Callable[[Message], Iterable[Output]], *, max_in_flight: int = 1000,
                 backoff: tuple[float, float] = (0.2, 10.0)) -> None:
        self.run = run
        self.consumer = consumer
        self.producer = producer
        self.handle = handle
        self.max_in_flight = max_in_flight
        self.backoff_min, self.backoff_max = backoff
        self.counters = run.counters
        self._tracked: dict[tuple[str, int], list[_Tracked]] = {}
        self._resend: list[tuple[_Tracked, tuple[str, int], Output]] = []
        self._in_flight = 0
        self._paused = False
        self.dead_letter_topic = run.settings.topic(contract.DEAD_LETTER)

    def subscribe(self, topics: list[str]) -> None:
        self.consumer.subscribe(topics, on_revoke=self._on_revoke)

    # -- the loop
    def loop(self, poll_s: float = 0.5) -> None:
        """Run until the runner is stopped; then drain deliveries and store what is done."""
        delay = self.backoff_min
        try:
            while not self.run.stop.is_set():
                self.producer.poll(0)
                self._resend_failed()
                if self._in_flight >= self.max_in_flight:
                    self._pause(True)  # the broker is not acknowledging: hold new messages
                elif self._paused:
                    self._pause(False)
                msg = self.consumer.poll(poll_s)
                if msg is None:
                    continue
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    self.run.kafka_error_cb(err)
                    if self.run.sleep(delay):
                        break
                    delay = min(delay * 2, self.backoff_max)
                    continue
                delay = self.backoff_min
                self.run.health.ok("broker")
                self._one(msg)
        finally:
            self.drain(self.run.settings.stop_deadline_s / 2)

    def _one(self, msg: Message) -> None:
        delay = self.backoff_min
        lost: set[str] = set()
        while True:
            try:
                outputs = list(self.handle(msg))
                self.counters["msg.handled"] += 1
                for dep in lost:
                    self.run.health.ok(dep)
                break
            except Retry as exc:
                lost.add(exc.dependency)
                self.counters["msg.retried"] += 1
                self.run.health.degraded(exc.dependency, exc.reason)
                self._pause(True)
                if self._wait_serving(delay):
                    return  # stopping: offset not stored, the message is handled after the restart
                delay = min(delay * 2, self.backoff_max)
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"[:2000]
                self.counters["msg.dead-letter"] += 1
                log.warning("dead-letter %s[%s]@%s: %s", msg.topic(), msg.partition(), msg.offset(), reason)
                outputs = [self.dead_letter_output(msg, reason)]
                break
        if self._paused:
            self._pause(False)
        self._track(msg, outputs)

    def dead_letter_output(self, msg: Message, reason: str) -> Output:
        return Output(self.dead_letter_topic, msg.key(),
                      contract.dead_letter_value(msg.topic() or "", msg.partition() or 0, msg.offset() or 0,
                                                 reason, msg.value()))

    def _wait_serving(self, seconds: float) -> bool:
        """Back off while keeping the group membership (poll the paused consumer); True if stopped."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.run.stop.is_set():
                return True
            self.producer.poll(0)
            self.consumer.poll(min(0.2, max(0.0, deadline - time.monotonic())))
        return self.run.stop.is_set()

    def _pause(self, pause: bool) -> None:
        if pause == self._paused:
            return
        with contextlib.suppress(KafkaException):
            parts = self.consumer.assignment()
            if parts:
                (self.consumer.pause if pause else self.consumer.resume)(parts)
        self._paused = pause

    # -- deliveries and offsets
    def _track(self, msg: Message, outputs: list[Output]) -> None:
        tp = (msg.topic() or "", msg.partition() or 0)
        item = _Tracked(msg.offset() or 0)
        self._tracked.setdefault(tp, []).append(item)
        for out in outputs:
            self._produce(item, tp, out)
        self._store(tp)

    def _produce(self, item: _Tracked, tp: tuple[str, int], out: Output) -> None:
        item.pending += 1
        self._in_flight += 1

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                self.counters["produce.failed"] += 1
                self.run.health.degraded("broker", f"delivery failed: {err.str()}")
                self._resend.append((item, tp, out))  # still pending: produced again
                return
            self.run.health.ok("broker")
            item.pending -= 1
            self._in_flight -= 1
            if item.pending == 0:
                self._store(tp)

        while True:
            try:
                self.producer.produce(out.topic, key=out.key, value=out.value, on_delivery=delivered)
                return
            except BufferError:  # local queue full (broker away): serve callbacks, try again
                self.producer.poll(0.5)
                if self.run.stop.is_set():
                    self.producer.poll(0)

    def _resend_failed(self) -> None:
        if not self._resend:
            return
        batch, self._resend = self._resend, []
        for item, tp, out in batch:
            item.pending -= 1
            self._in_flight -= 1
            self._produce(item, tp, out)

    def _store(self, tp: tuple[str, int]) -> None:
        items = self._tracked.get(tp)
        last = None
        while items and items[0].pending == 0:
            last = items.pop(0).offset
        if last is not None:
            with contextlib.suppress(KafkaException):  # the partition may have been revoked
                self.consumer.store_offsets(offsets=[TopicPartition(tp[0], tp[1], last + 1)])

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for p in partitions:
            self._tracked.pop((p.topic, p.partition), None)  # the next owner redelivers them

    def drain(self, timeout: float) -> int:
        """Wait up to ``timeout`` for outstanding deliveries; the number still unacknowledged."""
        deadline = time.monotonic() + timeout
        while self._in_flight and time.monotonic() < deadline:
            self._resend_failed()
            self.producer.flush(min(1.0, max(0.0, deadline - time.monotonic())))
        if self._in_flight:
            log.error("%d produced records not acknowledged at stop: their messages are redelivered",
                      self._in_flight)
        return self._in_flight


@contextlib.contextmanager
def dependency(run: Runner, name: str, *errors: type[BaseException]) -> Iterator[None]:
    """``with dependency(run, "catalog", OperationalError): ...`` turns those errors into Retry
    (degraded health, back-off, same message) and marks the dependency ok when the block succeeds."""
    try:
        yield
    except errors as exc:
        raise Retry(name, f"{type(exc).__name__}: {exc}") from exc
    run.health.ok(name)
