"""`IterationBatch`: the calls of one event-loop iteration become one, each caller still gets
its own reply, and a failure reaches every caller of that call."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from infrastructure.iteration_batch import IterationBatch


class Doubler:
    """Answers each item with twice its value, one future per batch, and keeps the batches."""

    def __init__(self, *, fail_with: Exception | None = None, replies_short_by: int = 0) -> None:
        self.batches: list[list[int]] = []
        self.fail_with = fail_with
        self.replies_short_by = replies_short_by

    def __call__(self, items: Sequence[int]) -> asyncio.Future[Sequence[Any]]:
        self.batches.append(list(items))
        future: asyncio.Future[Sequence[Any]] = asyncio.get_running_loop().create_future()
        if self.fail_with is not None:
            future.set_exception(self.fail_with)
        else:
            future.set_result([2 * item for item in items][self.replies_short_by :])
        return future


def test_calls_made_in_one_iteration_share_one_batch_and_get_their_own_replies() -> None:
    doubler = Doubler()

    async def run() -> list[int]:
        batch: IterationBatch[int] = IterationBatch(doubler)
        return list(await asyncio.gather(*(batch.add(item) for item in (1, 2, 3))))

    assert asyncio.run(run()) == [2, 4, 6]
    assert doubler.batches == [[1, 2, 3]]


def test_calls_of_later_iterations_make_later_batches() -> None:
    doubler = Doubler()

    async def run() -> list[int]:
        batch: IterationBatch[int] = IterationBatch(doubler)
        first = await batch.add(1)
        second, third = await asyncio.gather(batch.add(2), batch.add(3))
        return [first, second, third]

    assert asyncio.run(run()) == [2, 4, 6]
    assert doubler.batches == [[1], [2, 3]]


def test_a_failed_call_fails_every_caller_of_its_batch() -> None:
    async def run() -> list[Any]:
        batch: IterationBatch[int] = IterationBatch(Doubler(fail_with=ConnectionError("gone")))
        return list(await asyncio.gather(batch.add(1), batch.add(2), return_exceptions=True))

    assert [str(outcome) for outcome in asyncio.run(run())] == ["gone", "gone"]


def test_a_send_that_raises_at_once_fails_every_caller_too() -> None:
    def refuse(items: Sequence[int]) -> asyncio.Future[Sequence[Any]]:
        raise ValueError("cannot send")

    async def run() -> None:
        batch: IterationBatch[int] = IterationBatch(refuse)
        await asyncio.gather(batch.add(1), batch.add(2))

    with pytest.raises(ValueError, match="cannot send"):
        asyncio.run(run())


def test_fewer_replies_than_calls_fail_the_batch_instead_of_pairing_them_wrongly() -> None:
    async def run() -> None:
        batch: IterationBatch[int] = IterationBatch(Doubler(replies_short_by=1))
        await asyncio.gather(batch.add(1), batch.add(2))

    with pytest.raises(RuntimeError, match="1 replies for 2 calls"):
        asyncio.run(run())


def test_a_cancelled_caller_leaves_the_others_their_replies() -> None:
    async def run() -> int:
        batch: IterationBatch[int] = IterationBatch(Doubler())
        dropped = batch.add(1)
        kept = batch.add(2)
        dropped.cancel()
        return await kept

    assert asyncio.run(run()) == 4


def test_calls_left_unsent_by_a_closed_loop_do_not_hold_up_the_next_loops_calls() -> None:
    doubler = Doubler()
    batch: IterationBatch[int] = IterationBatch(doubler)
    orphans: list[asyncio.Future[Any]] = []
    first_loop = asyncio.new_event_loop()

    def add_and_stop() -> None:
        orphans.append(batch.add(1))
        first_loop.stop()  # ends after this iteration: the send it scheduled never runs

    try:
        first_loop.call_soon(add_and_stop)
        first_loop.run_forever()
    finally:
        first_loop.close()

    async def run() -> int:
        return await batch.add(2)

    assert asyncio.run(run()) == 4
    assert doubler.batches == [[2]]
    assert isinstance(orphans[0].exception(), RuntimeError)
