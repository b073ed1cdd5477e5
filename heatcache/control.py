"""Operator control: a pure fold of `control` events into a :class:`ControlState`, the follower
thread a stage uses to keep one current, and the one function that publishes a switch.

The `control` topic is compacted on :attr:`ControlEvent.key`, so a follower that reads it from
the beginning rebuilds the live switches (pins, prefetch pause, steering stop) at every start.
Stages only *read* the state (``follower.state``); the console and the CLI write through
:func:`publish_control`, so both go through the same code.

Use in a stage::

    follower = ControlFollower(bootstrap, settings.topic(contract.CONTROL),
                               config=kafkautil.client_config(settings)); follower.start()
    ...
    if follower.state.prefetch_paused: ...          # fetcher
    if follower.state.steering_stopped: ...         # DNS (the kill switch)
    pin = follower.state.pin(cache_key, host)       # streams: "always" / "never" / ""
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from confluent_kafka import Message

from heatcache import contract
from heatcache.contract import ControlEvent, DecodeError
from heatcache.kafkautil import Follower, HealthLike

log = logging.getLogger(__name__)

_EMPTY: Mapping[str, ControlEvent] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class ControlState:
    """The live switches. Immutable: a follower swaps in a new state per event (readers on other
    threads always see a consistent one without locks)."""

    urls: Mapping[str, ControlEvent] = field(default_factory=lambda: _EMPTY)  # cache key -> pin
    hosts: Mapping[str, ControlEvent] = field(default_factory=lambda: _EMPTY)  # host -> pin
    prefetch: ControlEvent | None = None
    steering: ControlEvent | None = None
    version: int = 0  # events folded so far: cheap change detection for memos

    @property
    def prefetch_paused(self) -> bool:
        return self.prefetch is not None and self.prefetch.value == "paused"

    @property
    def steering_stopped(self) -> bool:
        return self.steering is not None and self.steering.value == "stopped"

    def pin(self, cache_key: str, host: str = "") -> str:
        """``always``, ``never`` or ``""`` for a key; a URL pin wins over its host's pin."""
        url = self.urls.get(cache_key)
        if url is not None:
            return url.value
        entry = self.hosts.get(_host(host)) if host else None
        return entry.value if entry is not None else ""

    def as_dict(self) -> dict[str, Any]:
        """Plain data for the console and `heatcache status --json`."""
        def who(e: ControlEvent | None) -> dict[str, Any] | None:
            return None if e is None else {"value": e.value, "by": e.by, "ts": e.ts, "reason": e.reason}

        return {
            "prefetch_paused": self.prefetch_paused,
            "steering_stopped": self.steering_stopped,
            "prefetch": who(self.prefetch),
            "steering": who(self.steering),
            "pins": [{"target": e.target, "subject": e.subject, "value": e.value, "by": e.by, "ts": e.ts,
                      "reason": e.reason}
                     for e in sorted([*self.urls.values(), *self.hosts.values()], key=lambda e: (e.target, e.subject))],
        }


def _host(host: str) -> str:
    return host.lower().rstrip(".")


def fold(state: ControlState, event: ControlEvent) -> ControlState:
    """The state after one event (pure). Unpinning ("none") removes the pin."""
    version = state.version + 1
    if event.target in ("url", "host"):
        table = dict(state.urls if event.target == "url" else state.hosts)
        subject = event.subject if event.target == "url" else _host(event.subject)
        if event.value == "none":
            table.pop(subject, None)
        else:
            table[subject] = replace(event, subject=subject)
        view = MappingProxyType(table)
        if event.target == "url":
            return replace(state, urls=view, version=version)
        return replace(state, hosts=view, version=version)
    if event.target == "prefetch":
        return replace(state, prefetch=event, version=version)
    return replace(state, steering=event, version=version)


def fold_all(events: Iterable[ControlEvent], state: ControlState | None = None) -> ControlState:
    for event in events:
        state = fold(state or ControlState(), event)
    return state or ControlState()


def forget(state: ControlState, key: str) -> ControlState:
    """A tombstone (null value) for ``key`` on the compacted topic: that switch is gone."""
    target, _, subject = key.partition(":")
    if target == "url" and subject in state.urls:
        return replace(state, urls=MappingProxyType({k: v for k, v in state.urls.items() if k != subject}),
                       version=state.version + 1)
    if target == "host" and _host(subject) in state.hosts:
        return replace(state, hosts=MappingProxyType({k: v for k, v in state.hosts.items() if k != _host(subject)}),
                       version=state.version + 1)
    if target == "prefetch":
        return replace(state, prefetch=None, version=state.version + 1)
    if target == "steering":
        return replace(state, steering=None, version=state.version + 1)
    return state


def make_event(target: str, value: str, subject: str = "", by: str = "", reason: str = "",
               now: float | None = None) -> ControlEvent:
    """Build (and validate: raises DecodeError) a switch; hosts are lower-cased like cache keys."""
    if target == "host":
        subject = _host(subject)
    return ControlEvent(target=target, value=value, subject=subject, by=by, reason=reason,
                        ts=time.time() if now is None else now)


def publish_control(producer: Any, topic: str, event: ControlEvent, timeout: float = 10.0) -> None:
    """Write one switch and wait until Kafka has it (the CLI and the console both call this)."""
    producer.produce(topic, key=event.key.encode(), value=contract.encode(event))
    if producer.flush(timeout) != 0:
        raise RuntimeError(f"control event not acknowledged by Kafka within {timeout:.0f}s")


class ControlFollower(Follower):
    """Reads `control` from the beginning, then follows it; ``state`` is always the latest fold.

    ``ready`` is set once every partition reached the end it had at start (so a stage can wait
    for the switches before acting, e.g. the DNS before steering). ``on_change`` callbacks run on
    this thread with the new state. Undecodable records are counted and skipped (the topic is
    compacted and re-read at every start; the writer validates with the same contract). A broker
    not ready yet (NOT_LEADER_FOR_PARTITION on a fresh topic) or lost is waited for: see
    heatcache.kafkautil.Follower."""

    def __init__(self, bootstrap: str, topic: str, on_change: Callable[[ControlState], None] | None = None,
                 health: HealthLike | None = None, config: Mapping[str, Any] | None = None) -> None:
        # config: the client security settings (Kafka TLS), kafkautil.client_config(settings)
        super().__init__(bootstrap, [topic], name="control", group_prefix="heatcache-control", health=health,
                         config=config)
        self.topic = topic
        self.state = ControlState()
        self.errors = 0
        self._callbacks = [on_change] if on_change is not None else []

    def on_change(self, callback: Callable[[ControlState], None]) -> None:
        self._callbacks.append(callback)

    def handle(self, msgs: list[Message], caught_up: bool) -> None:
        for msg in msgs:
            self.apply_raw(msg.key(), msg.value())

    def apply_raw(self, key: bytes | None, value: bytes | None) -> None:
        """Fold one record (or tombstone) into ``state`` and tell the callbacks."""
        if value is None:
            new = forget(self.state, (key or b"").decode("utf-8", "replace"))
        else:
            try:
                new = fold(self.state, contract.decode(value, ControlEvent))
            except DecodeError as exc:
                self.errors += 1
                log.warning("ignoring bad control record: %s", exc)
                return
        self.state = new
        for cb in self._callbacks:
            try:
                cb(new)
            except Exception:
                log.exception("control callback failed")
