"""A small /ws client for end-to-end tests, over the `websockets` library.

One reader task collects every server frame in `frames` (in arrival order) and resolves the
request that an `ack` or `error` answers, by `id` (design.md §4). Every wait is bounded: it
returns as soon as its condition holds and fails with what the client has seen so far.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

T = TypeVar("T")

# Bounded waits. A live frame crosses commit, projection, Redis and a node in milliseconds;
# 20 s only matters on a starved 2-core CI box and still fails a delivery that never comes.
WAIT_TIMEOUT_S = 20.0
OPEN_TIMEOUT_S = 10.0  # the TCP + HTTP upgrade to a local server
CLOSE_TIMEOUT_S = 5.0  # the closing handshake; a dead peer is not waited for longer
POLL_INTERVAL_S = 0.01  # for `eventually`, which watches several clients at once
MAX_INCOMING_FRAME_BYTES = 4 * 1024 * 1024  # server frames carry one message (≤ 4,000 chars)


class WsClient:
    def __init__(self, connection: ClientConnection, name: str) -> None:
        self.connection = connection
        self.name = name
        self.frames: list[dict[str, Any]] = []
        self.closed = asyncio.Event()
        self._changed = asyncio.Event()
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._reader = asyncio.create_task(self._read(), name=f"ws-reader-{name}")

    @classmethod
    async def open(
        cls,
        url: str,
        token: str | None = None,
        *,
        name: str = "client",
        headers: dict[str, str] | None = None,
        wait_until_connected: bool = True,
    ) -> WsClient:
        """Connect to a `/ws` URL (with `?token=` when given); by default wait for `connected`."""
        if token is not None:
            url = f"{url}?token={token}"
        connection = await connect(
            url,
            additional_headers=headers,
            open_timeout=OPEN_TIMEOUT_S,
            close_timeout=CLOSE_TIMEOUT_S,
            max_size=MAX_INCOMING_FRAME_BYTES,
            compression=None,
            ping_interval=None,  # a test's socket must not be closed by a late pong on a busy box
        )
        client = cls(connection, name)
        if wait_until_connected:
            await client.wait_for(lambda frame: frame["event"] == "connected", "the connected frame")
        return client

    # ---- reading -----------------------------------------------------------------------------

    async def _read(self) -> None:
        try:
            async for raw in self.connection:
                frame = json.loads(raw)
                self.frames.append(frame)
                if frame.get("event") in ("ack", "error") and "id" in frame:
                    waiter = self._pending.pop(str(frame["id"]), None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(frame)
                self._changed.set()
        except ConnectionClosed:
            pass
        finally:
            self.closed.set()
            self._changed.set()
            for waiter in self._pending.values():
                if not waiter.done():
                    waiter.set_exception(AssertionError(f"{self.name}: the socket closed before the reply"))
            self._pending.clear()

    @property
    def close_code(self) -> int | None:
        return self.connection.close_code

    async def until(self, condition: Callable[[], T], what: str, timeout: float = WAIT_TIMEOUT_S) -> T:
        """Wait until `condition()` is truthy (re-checked on every frame); return its value."""
        deadline = time.monotonic() + timeout
        while True:
            self._changed.clear()
            result = condition()
            if result:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.closed.is_set():  # a closed socket gets no more frames
                raise AssertionError(
                    f"{self.name}: gave up (timeout {timeout} s) waiting for {what};"
                    f" closed={self.closed.is_set()} code={self.close_code}; last frames: {self.frames[-5:]}"
                )
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], what: str, *, since: int = 0, timeout: float = WAIT_TIMEOUT_S
    ) -> dict[str, Any]:
        """The first frame from index `since` on that matches `predicate`."""

        def found() -> dict[str, Any] | None:
            return next((frame for frame in self.frames[since:] if predicate(frame)), None)

        return await self.until(found, what, timeout)

    async def wait_event(
        self, event: str, matches: Callable[[dict[str, Any]], bool] = lambda data: True, *, since: int = 0,
        timeout: float = WAIT_TIMEOUT_S,
    ) -> dict[str, Any]:
        """The data of the first `event` frame (from index `since`) whose data matches."""
        frame = await self.wait_for(
            lambda frame: frame["event"] == event and matches(frame.get("data", {})), f"a {event} frame",
            since=since, timeout=timeout,
        )
        return frame.get("data", {})

    async def wait_closed(self, timeout: float = WAIT_TIMEOUT_S) -> int | None:
        """Wait for the server to close the socket; return the close code."""
        try:
            await asyncio.wait_for(self.closed.wait(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"{self.name}: the socket was not closed within {timeout} s") from None
        return self.close_code

    def mark(self) -> int:
        """A position in `frames`: pass it as `since` to look only at what comes later."""
        return len(self.frames)

    def events(self, event: str, since: int = 0) -> list[dict[str, Any]]:
        return [frame.get("data", {}) for frame in self.frames[since:] if frame["event"] == event]

    def messages(self, conversation_id: str, since: int = 0) -> list[dict[str, Any]]:
        """Every `message_received` for the conversation, in arrival order (duplicates kept)."""
        return [data["message"] for data in self.events("message_received", since) if data["conversationId"] == conversation_id]

    def seqs(self, conversation_id: str, since: int = 0) -> list[int]:
        return [message["seq"] for message in self.messages(conversation_id, since)]

    # ---- writing -----------------------------------------------------------------------------

    async def send_raw(self, payload: str | bytes) -> None:
        await self.connection.send(payload)

    async def request(self, event: str, data: dict[str, Any] | None = None, timeout: float = WAIT_TIMEOUT_S) -> dict[str, Any]:
        """Send a frame with a fresh id; return the `ack` or `error` frame that answers it."""
        request_id = f"{self.name}-{next(self._ids)}"
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = waiter
        await self.connection.send(json.dumps({"event": event, "data": data or {}, "id": request_id}))
        try:
            return await asyncio.wait_for(waiter, timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"{self.name}: no reply to {event} within {timeout} s") from None
        finally:
            self._pending.pop(request_id, None)

    async def ack(self, event: str, data: dict[str, Any] | None = None, timeout: float = WAIT_TIMEOUT_S) -> dict[str, Any]:
        """Send a request that must succeed; return the ack's data."""
        reply = await self.request(event, data, timeout)
        assert reply["event"] == "ack", f"{self.name}: {event} {data} was refused: {reply}"
        return reply.get("data", {})

    async def refused(self, event: str, data: dict[str, Any] | None = None) -> str:
        """Send a request that must fail; return the error code."""
        reply = await self.request(event, data)
        assert reply["event"] == "error", f"{self.name}: {event} {data} was accepted: {reply}"
        return reply["data"]["code"]

    async def send_message(self, conversation_id: str, content: str, **extra: Any) -> dict[str, Any]:
        """Send and wait for the ack; return the committed message."""
        return (await self.ack("send_message", {"conversationId": conversation_id, "content": content, **extra}))["message"]

    async def close(self) -> None:
        if not self.closed.is_set():
            try:
                await asyncio.wait_for(self.connection.close(), CLOSE_TIMEOUT_S)
            except (asyncio.TimeoutError, ConnectionClosed, OSError):
                pass
        self._reader.cancel()
        try:
            await self._reader
        except asyncio.CancelledError:
            pass


async def eventually(condition: Callable[[], T], what: str, timeout: float = WAIT_TIMEOUT_S) -> T:
    """A bounded poll over any state (several clients at once); return the truthy value."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(POLL_INTERVAL_S)
