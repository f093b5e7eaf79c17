"""What a subscription's source stream reads: feeds of the socket's live frames.

A `Feed` holds the frames of one event name that one subscription wants, in arrival order,
in a bounded queue. An `OperationScope` is what a source stream gets from its socket (through
the GraphQL context): it opens feeds on the socket's device, says when the stream is live, and
closes every feed it opened when the operation ends, however it ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from interfaces.ws.connection import OUTBOUND_QUEUE_LIMIT

if TYPE_CHECKING:
    from interfaces.graphql_ws.device import SubscriberDevice

FEED_LIMIT = OUTBOUND_QUEUE_LIMIT  # the /ws bound: a subscriber this far behind resumes faster
TYPING_EVENT = "typing_update"  # the hub sends it only to devices that joined the conversation
SCOPE_KEY = "graphql_ws_scope"  # where a source stream finds its OperationScope in the context

Wanted = Callable[[dict[str, Any]], bool]


class Feed:
    """The frames of one event name that one subscription wants, oldest first."""

    def __init__(self, event: str, wanted: Wanted, conversation_id: str | None = None) -> None:
        self.event = event
        self.wanted = wanted
        self.conversation_id = conversation_id
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(FEED_LIMIT)

    def offer(self, data: dict[str, Any]) -> bool:
        """False when the subscriber is too far behind to take it."""
        if not self.wanted(data):
            return True
        try:
            self._queue.put_nowait(data)
        except asyncio.QueueFull:
            return False
        return True

    def __aiter__(self) -> Feed:
        return self

    async def __anext__(self) -> dict[str, Any]:
        return await self._queue.get()


class OperationScope:
    def __init__(self, device: SubscriberDevice) -> None:
        self.device = device
        self.live: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.entered = False  # a source stream asked for this scope: tartiflette started one
        self._feeds: list[Feed] = []

    def follow(self, event: str, wanted: Wanted, conversation_id: str | None = None) -> Feed:
        """Start collecting the socket's frames of `event` that `wanted` accepts."""
        feed = Feed(event, wanted, conversation_id)
        self.device.add_feed(feed)
        self._feeds.append(feed)
        return feed

    def now_live(self) -> None:
        """The stream's feeds are open and access was checked: the subscription is live."""
        if not self.live.done():
            self.live.set_result(None)

    def close(self) -> None:
        for feed in self._feeds:
            self.device.remove_feed(feed)
        self._feeds.clear()
        self.now_live()  # nobody waits for a stream that ended before it started


def scope_of(ctx: dict[str, Any]) -> OperationScope:
    """The scope of the operation whose source stream is asking (so that stream has started)."""
    scope: OperationScope = ctx[SCOPE_KEY]
    scope.entered = True
    return scope
