"""Socket.IO compatibility at `/socket.io/` (design.md §4): the /ws events, with Socket.IO acks.

The seed's clients use `socket.io-client`. They connect with `auth: {token}` (or `?token=`, or
an `Authorization: Bearer` header); a bad token refuses the connection with `connect_error`
data `{code: "UNAUTHENTICATED", message}`. Then every /ws client event works by name, e.g.
`socket.emit("send_message", {conversationId, content}, ack => ...)`:

- with an ack callback, the callback gets the /ws ack data (`{message}` for a send, only after
  the commit), or `{error: {code, message}}`;
- without one, a failure arrives as an `error` event `{code, message}`, as on /ws.

Server events (`message_received`, `typing_update`, `unread_count`, ...) arrive as Socket.IO
events of the same names and data. One client's events are handled one at a time in order
(as /ws frames are), so two sends from one device commit in the order they were emitted.
Every api node serves it; the hub, presence and the handlers are the /ws ones.
"""

from __future__ import annotations

import contextvars
import logging
from typing import Any
from urllib.parse import parse_qs

import orjson
import socketio

from interfaces.runtime import Runtime
from interfaces.socket_io.device import SocketIoDevice
from interfaces.ws.endpoint import describe_error, goodbye, run_event, welcome
from interfaces.ws.handlers import HANDLERS, Session
from interfaces.errors import BadRequestError
from interfaces.ws.protocol import MAX_FRAME_BYTES, FrameTooLargeError

log = logging.getLogger(__name__)

SOCKET_IO_PATH = "socket.io"
RESERVED_EVENTS = ("connect", "disconnect")  # Socket.IO's own; authentication is the handshake
# As on /ws: events above MAX_FRAME_BYTES get PAYLOAD_TOO_LARGE and the connection stays;
# packets above this are abuse and Engine.IO drops the connection.
MAX_PACKET_BYTES = 1024 * 1024

# Whether the event being handled asked for an ack (Socket.IO does not tell the handler).
_wants_ack: contextvars.ContextVar[bool] = contextvars.ContextVar("wants_ack", default=False)


class _Server(socketio.AsyncServer):  # type: ignore[misc]
    async def _handle_event(self, eio_sid: str, namespace: str, id: int | None, data: Any) -> Any:
        # Handlers run inline (async_handlers=False), so the flag is seen by this event only.
        token = _wants_ack.set(id is not None)
        try:
            return await super()._handle_event(eio_sid, namespace, id, data)
        finally:
            _wants_ack.reset(token)


def with_socket_io(app: Any, runtime: Runtime, *, cors_origin: str | None) -> Any:
    """`app` with Socket.IO served at /socket.io/; everything else (and lifespan) goes to `app`."""
    server = _Server(
        async_mode="asgi",
        async_handlers=False,  # one client's events in order, like /ws frames
        cors_allowed_origins=[cors_origin] if cors_origin else None,  # None: same origin only
        max_http_buffer_size=MAX_PACKET_BYTES,
        logger=False,
        engineio_logger=False,
    )
    sessions: dict[str, Session] = {}

    @server.event  # type: ignore[misc]
    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        if runtime.hub is None or runtime.service is None:
            raise _refused("UNAVAILABLE", "this node does not serve WebSockets")
        user = runtime.user_for_token(_token(environ, auth))
        if user is None:
            raise _refused("UNAUTHENTICATED", "missing, invalid or expired token")
        device = SocketIoDevice(server, sid, user)
        device.start()
        sessions[sid] = Session(runtime, device)
        await welcome(runtime, device)

    @server.event  # type: ignore[misc]
    async def disconnect(sid: str, *_: Any) -> None:
        session = sessions.pop(sid, None)
        if session is not None:
            await goodbye(runtime, session.connection)

    def handler_for(event: str) -> Any:
        async def handle(sid: str, data: Any = None, *_: Any) -> Any:
            session = sessions.get(sid)
            if session is None:
                return None
            try:
                if data is None:
                    data = {}
                if not isinstance(data, dict):
                    raise BadRequestError("the event's data must be an object")
                if len(orjson.dumps(data)) > MAX_FRAME_BYTES:
                    raise FrameTooLargeError(f"events are limited to {MAX_FRAME_BYTES} bytes")
                return await run_event(session, event, data)
            except Exception as error:
                return _failed(session, describe_error(error))

        return handle

    for event in HANDLERS:
        if event not in RESERVED_EVENTS:
            server.on(event, handler_for(event))
    server.on("*", _unknown_event(sessions))
    return socketio.ASGIApp(server, other_asgi_app=app, socketio_path=SOCKET_IO_PATH)


def _unknown_event(sessions: dict[str, Session]) -> Any:
    async def unknown(event: str, sid: str, *_: Any) -> Any:
        return _failed(sessions.get(sid), {"code": "UNKNOWN_EVENT", "message": f"unknown event {event!r}"})

    return unknown


def _failed(session: Session | None, problem: dict[str, str]) -> Any:
    """As on /ws: the ack carries the error if the client asked for one, else an `error` event."""
    if _wants_ack.get():
        return {"error": problem}
    if session is not None:
        session.connection.send("error", problem)
    return None


def _refused(code: str, message: str) -> Exception:
    """`connect_error` on the client: `error.message` is the message, `error.data` the code too."""
    return socketio.exceptions.ConnectionRefusedError(message, {"code": code, "message": message})


def _token(environ: dict[str, Any], auth: Any) -> str | None:
    if isinstance(auth, dict) and isinstance(auth.get("token"), str):
        return str(auth["token"])
    query = parse_qs(environ.get("QUERY_STRING", ""))
    if query.get("token"):
        return query["token"][0]
    header = environ.get("HTTP_AUTHORIZATION", "")
    if header.lower().startswith("bearer "):
        return str(header[7:].strip())
    return None
