"""The streams worker's Faust consumer (streams.app._Consumer) keeps its committed-offset record
true when a commit is not done. The group's answer is given at the driver's ``_commit`` (what
Faust's aiokafka driver returns for aiokafka's CommitFailedError "already rebalanced"): a
rebalance racing a commit cannot be provoked on a real broker on demand."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from faust.types import TP

from heatcache import contract
from heatcache.settings import Settings
from streams.app import make_app


def commit_with_answer(settings: Settings, answers: list[bool], offsets: list[int]) -> list[tuple[bool, Any, bool]]:
    """Commit each offset of partition 0 in turn, the group answering ``answers``; per commit:
    (done, the recorded committed offset, whether Faust would commit that offset again)."""
    app, _stage = make_app(settings, "127.0.0.1:9")  # never connects: the commit answer is given
    consumer: Any = app.consumer
    tp = TP(settings.topic(contract.REQUESTS), 0)
    consumer.assignment = lambda: {tp}
    replies = iter(answers)

    async def group_answers(_offsets: Mapping[TP, int]) -> bool:
        return next(replies)

    consumer._thread.commit = group_answers  # the consumer thread's aiokafka commit
    out = []

    async def run() -> None:
        for offset in offsets:
            done = await consumer._commit_offsets({tp: offset})
            out.append((done, consumer._committed_offset.get(tp), consumer._should_commit(tp, offset)))

    asyncio.run(run())
    return out


def test_a_refused_commit_is_made_again(base_settings: Settings) -> None:
    # committed 5; 9 refused (rebalancing): 9 is still to commit, the record says 5; then done
    got = commit_with_answer(base_settings, [True, False, True], [5, 9, 9])
    assert got == [(True, 5, False), (False, 5, True), (True, 9, False)]


def test_a_refused_first_commit_leaves_nothing_recorded(base_settings: Settings) -> None:
    got = commit_with_answer(base_settings, [False], [3])
    assert got == [(False, None, True)]
