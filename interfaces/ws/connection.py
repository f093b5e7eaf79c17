"""One WebSocket client (a device): its outbound frames and what it has already been sent.

Frames go through a bounded buffer drained by a writer task that exists only while there is
something to write, so a slow client never makes the server buffer without limit (when the
buffer is full the connection is closed with `SLOW_CONSUMER_CODE`, and the client resumes with
`sync`) and an idle one costs no task. A failure here closes this connection only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from typing import Any

import orjson
from starlette.websockets import WebSocket

from interfaces.ws.wire import DirectWriter, at_end_of_iteration, wire_frame

log = logging.getLogger(__name__)

OUTBOUND_QUEUE_LIMIT = 1000  # frames; a client this far behind resumes faster with sync
SLOW_CONSUMER_CODE = 4008  # "fell behind": reconnect and sync
RECENT_ACKS = 256  # message ids this device sent itself: it has them from the ack


class Connection:
    def __init__(self, websocket: WebSocket, user_id: str, *, direct: DirectWriter | None = None) -> None:
        self.websocket = websocket
        self.user_id = user_id
        # Writes whole frames straight to the socket while nothing is queued (see wire.py): the
        # /ws endpoint passes one; devices that shape their own frames (Socket.IO, graphql-ws)
        # do not.
        self._direct = direct
        self.id = uuid.uuid4().hex
        self.joined: set[str] = set()  # conversations this device opened (typing goes here)
        self.seen_seq: dict[str, int] = {}  # per member conversation: highest seq sent live
        # The ids of this device's own recent sends (created on the first one): a set for an O(1)
        # test per delivery (a 1,000-member group tests it 1,000 times per message) and a deque
        # to forget the oldest.
        self._acked: set[str] | None = None
        self._acked_order: deque[str] | None = None
        # Frames waiting for the socket, and the task writing them: both exist only while there
        # is something to write, so an idle device holds no task, queue or buffer (10,000 idle
        # sockets per process is a target; an asyncio.Queue and a task cost ~3 KB each).
        self._pending: deque[str] | None = None
        self._flusher: asyncio.Task[None] | None = None
        # Frames (text, wire bytes) for the direct path, written together at the end of this
        # event-loop iteration (see wire.py); None while there are none.
        self._corked: list[tuple[str, bytes]] | None = None
        self.closed = False

    def start(self) -> None:
        """Nothing to start: a writer task appears when the first frame is queued."""

    async def stop(self) -> None:
        self.closed = True
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._flusher

    # ---- sending -------------------------------------------------------------------------

    def send(self, event: str, data: dict[str, Any] | None = None, request_id: Any = None) -> None:
        payload: dict[str, Any] = {"event": event, "data": data if data is not None else {}}
        if request_id is not None:
            payload = {"event": event, "id": request_id, "data": payload["data"]}
        self.send_text(orjson.dumps(payload).decode())

    def send_text(self, text: str) -> None:
        if self.closed:
            return
        # Nothing queued or in flight: the frame goes straight to the socket, in order, with
        # whatever else this iteration sends it. The bytes are built now: a fan-out passes the
        # same text to every device in a row, and wire_frame caches only the last one.
        if self._flusher is None and self._direct is not None:
            if self._corked is None:
                self._corked = []
                at_end_of_iteration(self._write_corked)
            self._corked.append((text, wire_frame(text)))
            return
        self._enqueue(text)

    def _write_corked(self) -> None:
        corked, self._corked = self._corked, None
        if not corked or self.closed:
            return
        if self._flusher is None and self._direct is not None:
            frames = corked[0][1] if len(corked) == 1 else b"".join(frame for _, frame in corked)
            if self._direct(frames):
                return
        for text, _ in corked:  # closing, or paused by flow control: the ASGI path, in order
            self._enqueue(text)

    def _enqueue(self, text: str) -> None:
        if self.closed:
            return
        if self._pending is None:
            self._pending = deque()
        if len(self._pending) >= OUTBOUND_QUEUE_LIMIT:
            log.info("closing %s (%s): outbound queue full", self.id, self.user_id)
            self.closed = True
            self._pending = None
            asyncio.create_task(self._close(SLOW_CONSUMER_CODE, "too far behind: reconnect and sync"))
            return
        self._pending.append(text)
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())  # unnamed: naming cost 4% of a fan-out

    def deliver_message(self, conversation_id: str, seq: int, message_id: str | None, text: str) -> None:
        """A live message: sent once, in seq order; the device's own sends it already has."""
        if seq <= self.seen_seq.get(conversation_id, 0):
            return  # already delivered (live, by catch-up, or before this socket connected)
        self.seen_seq[conversation_id] = seq
        if message_id is not None and self._acked is not None and message_id in self._acked:
            return
        self.send_text(text)

    def note_own_message(self, message_id: str) -> None:
        if self._acked is None or self._acked_order is None:
            self._acked, self._acked_order = set(), deque()
        self._acked.add(message_id)
        self._acked_order.append(message_id)
        if len(self._acked_order) > RECENT_ACKS:
            self._acked.discard(self._acked_order.popleft())

    def left_conversation(self, conversation_id: str) -> None:
        """The user is no longer a member (subscription devices end their streams here)."""

    # ---- the writer task -----------------------------------------------------------------

    async def _flush(self) -> None:
        """Write queued frames in order, then end: the next frame starts a new task."""
        try:
            while self._pending:
                await self._write(self._pending.popleft())
        except Exception:  # the socket went away; the receive loop ends the session
            self.closed = True
        finally:
            self._flusher = None
            if not self._pending:
                self._pending = None  # an idle device keeps no buffer

    async def _write(self, text: str) -> None:
        await self.websocket.send_text(text)

    async def _close(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await self.websocket.close(code=code, reason=reason)
