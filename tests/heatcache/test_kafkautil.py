"""The follower's pure parts: which partitions to wait for, EOF bookkeeping, what is transient."""

from __future__ import annotations

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, KafkaError

from heatcache.kafkautil import CatchUp, is_transient, next_delay, pending_at_start


def test_pending_at_start_waits_only_for_partitions_with_data_ahead() -> None:
    marks = {("t", 0): (0, 5), ("t", 1): (3, 3), ("u", 0): (0, 9), ("u", 1): (0, 9), ("u", 2): (0, 9)}
    starts = {("t", 0): OFFSET_BEGINNING, ("u", 0): OFFSET_END, ("u", 1): 9, ("u", 2): 4}
    # t/1 is empty (compacted away), u/0 starts at the end, u/1 at its high watermark
    assert pending_at_start(marks, starts) == {("t", 0), ("u", 2)}
    assert pending_at_start({}, {}) == set()


def test_catch_up_is_announced_once() -> None:
    catch = CatchUp({("t", 0), ("t", 1)})
    assert not catch.take()
    catch.eof(("t", 0))
    catch.eof(("t", 0))
    assert not catch.take()
    catch.eof(("t", 1))
    assert catch.take()
    assert not catch.take()  # later EOFs (every time the follower reaches the end) say nothing
    assert CatchUp(()).take()


def test_transient_errors_and_back_off() -> None:
    # a fresh broker answers the watermark query with NOT_LEADER_FOR_PARTITION for a moment
    for code in (KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE, KafkaError._TRANSPORT,
                 KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT, KafkaError.BROKER_NOT_AVAILABLE):
        assert is_transient(code)
    for code in (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError._PARTITION_EOF, KafkaError.INVALID_CONFIG):
        assert not is_transient(code)
    delays = [0.2]
    for _ in range(8):
        delays.append(next_delay(delays[-1]))
    assert delays[:3] == [0.2, 0.4, 0.8] and max(delays) == 5.0
