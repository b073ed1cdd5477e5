"""streams.outputs: a generation completes only when what its inputs produced is acknowledged.

Unit tests drive Generation's delivery reports by hand (stand-in messages: Generation only reads
their topic/partition/key/value/offset); the integration test has the real broker refuse every
HotUrl (hot-urls' max.message.bytes below any batch)."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from confluent_kafka import KafkaError
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

from heatcache import contract
from heatcache.contract import RequestEvent
from heatcache.kafkautil import admin, read_topic
from heatcache.settings import Settings
from streams.outputs import DeliveryFailed, Generation, Refused
from tests.faults.stackproc import wait_for
from tests.streams.conftest import Workers, changelog_meta, last_offsets, produce, streams_settings


class Msg:
    def __init__(self, topic: str, offset: int = 0) -> None:
        self._topic, self._offset = topic, offset

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return b"v"


TOO_LARGE = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)


def test_a_refused_output_completes_only_after_its_dead_letter() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        dead: asyncio.Future[None] = loop.create_future()
        seen: list[list[Refused]] = []

        def on_refused(refused: list[Refused]) -> asyncio.Future[None]:
            seen.append(list(refused))
            return dead

        gen = Generation(loop, "chg", "dead", on_refused)
        gen.sent = 3
        gen.on_delivery(None, Msg("chg", 7))  # type: ignore[arg-type]
        gen.on_delivery(TOO_LARGE, Msg("hot"))  # type: ignore[arg-type]
        gen.on_delivery(None, Msg("hot"))  # type: ignore[arg-type]
        gen.seal()
        await asyncio.sleep(0)
        assert [r.topic for r in seen[0]] == ["hot"] and "too large" in seen[0][0].reason.lower()
        assert not gen.done.done()  # the inputs are not acked before the dead-letter is
        dead.set_result(None)
        assert await gen.done == {0: 7}

        # a refused state record (or dead-letter): the state is not durable, nothing is acked
        for topic in ("chg", "dead"):
            gen = Generation(loop, "chg", "dead", on_refused)
            gen.sent = 1
            gen.on_delivery(TOO_LARGE, Msg(topic))  # type: ignore[arg-type]
            gen.seal()
            with pytest.raises(DeliveryFailed):
                await gen.done

    asyncio.run(main())


def ev(key: str, client: str, ts: float) -> RequestEvent:
    host = key.split("/")[2]
    return RequestEvent(ts, client, "GET", host, "/" + key.split("/", 3)[3], key, key)


@pytest.mark.integration
def test_a_hot_url_the_broker_refuses_goes_to_dead_letter_and_the_worker_goes_on(
        kafka_settings: Settings, workers: Workers) -> None:
    s = streams_settings(kafka_settings)
    hot_topic = s.topic(contract.HOT_URLS)
    res = ConfigResource(ResourceType.TOPIC, hot_topic, incremental_configs=[
        ConfigEntry("max.message.bytes", "64", incremental_operation=AlterConfigOpType.SET)])
    client = admin(s.kafka_bootstrap, s)  # kept: its futures die with it
    for fut in client.incremental_alter_configs([res]).values():
        fut.result(30)
    proc = workers.start(s)
    k1, k2 = "http://a.example/one.iso", "http://b.example/two.iso"

    def dead() -> list[dict[str, object]]:
        return [orjson.loads(m.value()) for m in read_topic(s.kafka_bootstrap, s.topic(contract.DEAD_LETTER), 10)]

    produce(s, [ev(k1, c, 10 + i) for i, c in enumerate("abc")])
    wait_for(lambda: any(k1 in str(d["value"]) for d in dead()), what="the refused HotUrl in dead-letter")
    first = next(d for d in dead() if k1 in str(d["value"]))
    assert first["topic"] == hot_topic and "refused by the broker" in str(first["reason"])
    # the worker keeps running, and its state (and so its offsets) still moves on
    produce(s, [ev(k2, c, 20 + i) for i, c in enumerate("abc")])
    wait_for(lambda: any(k2 in str(d["value"]) for d in dead()), what="the second refused HotUrl")
    wait_for(lambda: changelog_meta(s) == last_offsets(s), what="state durable up to the last message")
    assert proc.proc.poll() is None
