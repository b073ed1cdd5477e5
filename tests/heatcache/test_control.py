"""The control topic: strict decoding of ControlEvent, the pure fold, and the follower on Kafka."""

from __future__ import annotations

import time

import pytest

from heatcache import contract
from heatcache.contract import ControlEvent, DecodeError
from heatcache.control import ControlFollower, ControlState, fold, fold_all, forget, make_event, publish_control
from heatcache.kafkautil import producer, read_topic
from heatcache.settings import Settings

KEY = "http://example.test/a.iso"


def test_roundtrip_and_key() -> None:
    ev = make_event("host", "never", "Example.TEST.", by="admin", reason="licence", now=5.0)
    assert ev.subject == "example.test" and ev.key == "host:example.test"
    assert contract.decode(contract.encode(ev), ControlEvent) == ev


@pytest.mark.parametrize("raw", [
    b'{"v":1,"kind":"control","target":"url","value":"maybe","subject":"k"}',
    b'{"v":1,"kind":"control","target":"url","value":"always"}',
    b'{"v":1,"kind":"control","target":"prefetch","value":"paused","subject":"x"}',
    b'{"v":1,"kind":"control","target":"dns","value":"stopped"}',
    b'{"v":1,"kind":"control","target":"steering","value":"stopped","ts":"now"}',
    b'{"v":1,"kind":"control","target":"steering","value":7}',
    b'{"v":1,"kind":"control","target":"steering","value":"stopped","extra":1}',
    b'{"v":1,"kind":"cache","cache_key":"k","state":"cached"}',
])
def test_bad_control_records_are_refused(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        contract.decode(raw, ControlEvent)


def test_fold_pins_pause_and_steering() -> None:
    state = fold_all([
        make_event("url", "always", KEY, now=1),
        make_event("host", "never", "big.test", now=2),
        make_event("prefetch", "paused", by="ops", now=3),
        make_event("steering", "stopped", now=4),
    ])
    assert state.pin(KEY, "example.test") == "always"
    assert state.pin("http://big.test/x", "BIG.test") == "never"
    assert state.pin("http://other.test/x", "other.test") == ""
    assert state.prefetch_paused and state.steering_stopped and state.version == 4
    assert state.as_dict()["prefetch"]["by"] == "ops"
    # a URL pin wins over its host's
    state = fold(state, make_event("url", "always", "http://big.test/x", now=5))
    assert state.pin("http://big.test/x", "big.test") == "always"
    # unpin, resume, start
    state = fold_all([make_event("url", "none", KEY), make_event("host", "none", "big.test"),
                      make_event("prefetch", "running"), make_event("steering", "running")], state)
    assert state.pin(KEY, "example.test") == "" and state.pin("http://big.test/y", "big.test") == ""
    assert not state.prefetch_paused and not state.steering_stopped
    assert ControlState().pin(KEY) == "" and not ControlState().steering_stopped


def test_fold_is_pure() -> None:
    before = ControlState()
    after = fold(before, make_event("url", "never", KEY))
    assert before.urls == {} and after.urls[KEY].value == "never"


def test_tombstones_forget_a_switch() -> None:
    state = fold_all([make_event("url", "never", KEY), make_event("steering", "stopped")])
    state = forget(state, f"url:{KEY}")
    assert state.pin(KEY) == ""
    assert not forget(state, "steering:").steering_stopped
    assert forget(state, "nonsense") is state


def test_follower_rebuilds_and_follows(kafka_settings: Settings) -> None:
    topic = kafka_settings.topic(contract.CONTROL)
    prod = producer(kafka_settings.kafka_bootstrap)
    publish_control(prod, topic, make_event("prefetch", "paused", by="test"))
    publish_control(prod, topic, make_event("url", "never", KEY))
    prod.produce(topic, key=b"url:x", value=b"not json")  # skipped, counted
    prod.flush(10)
    follower = ControlFollower(kafka_settings.kafka_bootstrap, topic)
    follower.start()
    try:
        assert follower.wait_ready(30)
        assert follower.state.prefetch_paused and follower.state.pin(KEY) == "never"
        assert follower.errors == 1
        publish_control(prod, topic, make_event("prefetch", "running"))
        deadline = time.monotonic() + 30
        while follower.state.prefetch_paused:
            assert time.monotonic() < deadline, "the follower never saw the resume"
            time.sleep(0.05)
    finally:
        follower.stop()
        follower.join(10)
    assert len(read_topic(kafka_settings.kafka_bootstrap, topic)) == 4


def test_fetch_progress_roundtrip_and_strictness() -> None:
    ev = contract.FetchProgress(cache_key=KEY, state="running", url=KEY, host="example.test", done_bytes=10,
                                total_bytes=100, speed_bps=5.5, ts=1.0)
    assert contract.decode(contract.encode(ev), contract.FetchProgress) == ev
    for raw in (b'{"v":1,"kind":"progress","cache_key":"k","state":"half"}',
                b'{"v":1,"kind":"progress","cache_key":"k","state":"running","done_bytes":-1}',
                b'{"v":1,"kind":"progress","cache_key":"k","state":"running","total_bytes":"9"}'):
        with pytest.raises(DecodeError):
            contract.decode(raw, contract.FetchProgress)
