"""Server frames written straight to the socket: encoded once per fan-out, not per recipient.

A message to a 1,000-member group goes to 1,000 sockets. Through the ASGI stack each delivery
costs a task, Starlette's and uvicorn's send wrappers and websockets' frame serialisation, about
two thirds of the event loop's time per delivery (py-spy, group bench). A server frame is not
masked (RFC 6455 §5.1), so its bytes are the same for every recipient: `wire_frame` builds them
once for a given text object, and `direct_writer` hands them to the connection's transport.

Frames for one socket produced during one event-loop iteration leave in one write
(`at_end_of_iteration`): a write is a syscall that on loopback also runs the receiver's TCP
work, 60% of the event loop in a group run (py-spy). When a node falls behind, the messages that
waited arrive together and each socket gets them in one write, so the cost per frame falls as the
load rises, as a group commit's does. A lone frame waits only for the callbacks already due.

The transport is uvicorn's (`--ws websockets-sansio`, which `loopify serve` uses): the ASGI
`send` callable is a method of its protocol object. Anything else (another server, a test
client, a socket closing or paused by flow control) gets no direct writer, or a False from it,
and the caller falls back to the ASGI path. uvicorn writes each frame of its own (pings, pongs,
closes) to the transport at once, so whole frames written here never interleave with its.
"""

from __future__ import annotations

import asyncio
import struct
import threading
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


class _IterationEnd:
    """The callbacks to run once the current iteration of `loop` has run its other callbacks."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.callbacks: list[Callable[[], None]] = []
        self.scheduled = False

    def run(self) -> None:
        callbacks, self.callbacks = self.callbacks, []
        self.scheduled = False
        for callback in callbacks:
            callback()


# Per thread, for the loop it runs (tests run several loops, one at a time or one per thread);
# uvloop's loops take neither attributes nor weak references.
_iteration_end = threading.local()


def at_end_of_iteration(callback: Callable[[], None]) -> None:
    """Run `callback` once the running loop has run the callbacks already due (`call_soon`
    order: after them, before any I/O that arrives meanwhile)."""
    loop = asyncio.get_running_loop()
    end: _IterationEnd | None = getattr(_iteration_end, "end", None)
    if end is None or end.loop is not loop:
        end = _iteration_end.end = _IterationEnd(loop)
    end.callbacks.append(callback)
    if not end.scheduled:
        end.scheduled = True
        loop.call_soon(end.run)


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
