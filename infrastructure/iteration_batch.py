"""Calls made during one event-loop iteration, sent on as one.

Frames that arrive together are handled together: uvicorn hands the frames of every socket
that one poll found readable to their handlers in the same iteration, and the group-commit
writer settles every command of a batch in one callback. Each of those handlers making its own
Redis call costs a command to pack, a write (a syscall) and a reply to parse on the event loop,
and a script to start in Redis. An `IterationBatch` collects the calls of one iteration and
makes them one call at the start of the next (`call_soon`: after the callbacks already due,
before any I/O that arrives meanwhile), so the cost per call falls as the load rises, as a group
commit's does. A lone call waits only for the callbacks already due. (At 1,000 msg/s in the
chat bench, about two sends shared each call: Redis's `commandstats`, docs/performance.md.)

The same timing as `interfaces/ws/wire.at_end_of_iteration`, which corks a socket's frames;
that helper belongs to the interfaces layer, which infrastructure does not import, and a batch
also has to drop what a closed loop never sent (tests run many loops).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")

# Sends the items of one iteration; its future gives one reply per item, in order.
SendBatch = Callable[[Sequence[Item]], "asyncio.Future[Sequence[Any]]"]


class IterationBatch(Generic[Item]):
    def __init__(self, send_batch: SendBatch[Item]) -> None:
        self._send_batch = send_batch
        self._items: list[Item] = []
        self._replies: list[asyncio.Future[Any]] = []
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop that will send `_items`

    def add(self, item: Item) -> asyncio.Future[Any]:
        """Queue `item` for this iteration's call; its own reply comes in the returned future."""
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[Any] = loop.create_future()
        if loop is not self._loop:  # items left by a loop that closed before sending them
            _fail(self._replies, RuntimeError("the event loop closed before this call was sent"))
            self._items, self._replies, self._loop = [], [], loop
        if not self._items:
            loop.call_soon(self._send)
        self._items.append(item)
        self._replies.append(reply)
        return reply

    def _send(self) -> None:
        items, replies = self._items, self._replies
        self._items, self._replies = [], []
        try:
            call = self._send_batch(items)
        except Exception as error:  # noqa: BLE001 - every caller hears of it
            _fail(replies, error)
            return
        call.add_done_callback(lambda done: _answer(done, replies))


def _answer(call: asyncio.Future[Sequence[Any]], replies: list[asyncio.Future[Any]]) -> None:
    if call.cancelled():
        _fail(replies, asyncio.CancelledError())
        return
    error = call.exception()
    if error is not None:
        _fail(replies, error)
        return
    answers = call.result()
    if len(answers) != len(replies):
        _fail(replies, RuntimeError(f"{len(answers)} replies for {len(replies)} calls"))
        return
    for reply, answer in zip(replies, answers):
        if not reply.done():  # its caller may have been cancelled meanwhile
            reply.set_result(answer)


def _fail(replies: list[asyncio.Future[Any]], error: BaseException) -> None:
    for reply in replies:
        if not reply.done():
            reply.set_exception(error)
