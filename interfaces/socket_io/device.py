"""A Socket.IO client as the node's hub sees it: one device of its user, like a /ws socket.

The hub hands every frame for the user to `send_text` as the /ws JSON text
`{"event": ..., "data": ...}`; this device's writer task turns it into a Socket.IO event of the
same name and data. The bounded buffer and the slow-consumer rule are the /ws ones (a client
that falls behind is disconnected and resumes with `sync`).
"""

from __future__ import annotations

import contextlib
from typing import Any

import orjson

from interfaces.ws.connection import Connection


class SocketIoDevice(Connection):
    def __init__(self, server: Any, sid: str, user_id: str) -> None:
        super().__init__(None, user_id)  # type: ignore[arg-type]  # no Starlette socket: Socket.IO owns it
        self.server = server
        self.sid = sid

    async def _write(self, text: str) -> None:
        frame = orjson.loads(text)
        await self.server.emit(frame["event"], frame.get("data") or {}, to=self.sid)

    async def _close(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await self.server.emit("error", {"code": "SLOW_CONSUMER", "message": reason}, to=self.sid)
            await self.server.disconnect(self.sid)
