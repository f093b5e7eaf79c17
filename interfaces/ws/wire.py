"""Server frames written straight to the socket: encoded once per fan-out, not per recipient.

A message to a 1,000-member group goes to 1,000 sockets. Through the ASGI stack each delivery
costs a task, Starlette's and uvicorn's send wrappers and websockets' frame serialisation, about
two thirds of the event loop's time per delivery (py-spy, group bench). A server frame is not
masked (RFC 6455 §5.1), so its bytes are the same for every recipient: `wire_frame` builds them
once for a given text object, and `direct_writer` hands them to the connection's transport.

The transport is uvicorn's (`--ws websockets-sansio`, which `loopify serve` uses): the ASGI
`send` callable is a method of its protocol object. Anything else (another server, a test
client, a socket closing or paused by flow control) gets no direct writer, or a False from it,
and the caller falls back to the ASGI path. uvicorn writes each frame of its own (pings, pongs,
closes) to the transport at once, so whole frames written here never interleave with its.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable, MutableMapping
from typing import Any

RAW_SEND_KEY = "loopify.raw_send"  # the server's own ASGI send, kept in the scope (see below)

DirectWriter = Callable[[bytes], bool]

_last: tuple[str, bytes] | None = None  # one entry: a fan-out passes the same str to every device


def wire_frame(text: str) -> bytes:
    """The complete, unmasked text frame for `text` (cached for the same object)."""
    global _last
    if _last is not None and _last[0] is text:
        return _last[1]
    payload = text.encode()
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x81, size)  # FIN + text opcode, unmasked length
    elif size < 1 << 16:
        header = struct.pack("!BBH", 0x81, 126, size)
    else:
        header = struct.pack("!BBQ", 0x81, 127, size)
    frame = header + payload
    _last = (text, frame)
    return frame


def keep_raw_send(app: Any) -> Any:
    """ASGI middleware (outermost): remember the server's `send` in WebSocket scopes, before
    Starlette wraps it, so `direct_writer` can reach the protocol behind it."""

    async def with_raw_send(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            scope[RAW_SEND_KEY] = send
        await app(scope, receive, send)

    return with_raw_send


def direct_writer(scope: MutableMapping[str, Any]) -> DirectWriter | None:
    """A function writing a whole frame to this WebSocket's transport, returning False when it
    cannot now (closing, closed or paused: use the ASGI path); None when the server is not one
    whose protocol this knows."""
    protocol = getattr(scope.get(RAW_SEND_KEY), "__self__", None)
    transport = getattr(protocol, "transport", None)
    writable = getattr(protocol, "writable", None)
    if transport is None or not isinstance(writable, asyncio.Event) or not hasattr(protocol, "close_sent"):
        return None

    def write(frame: bytes) -> bool:
        if (
            protocol.close_sent
            or not getattr(protocol, "handshake_complete", False)
            or getattr(protocol, "disconnected", False)
            or not writable.is_set()
            or transport.is_closing()
        ):
            return False
        transport.write(frame)
        return True

    return write
