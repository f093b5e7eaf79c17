"""`GET /ws`: authenticate, register the device, then answer frames until the socket closes.

Auth (design.md §4): `?token=JWT`, `Authorization: Bearer JWT`, or a first frame
`{"event":"connect","data":{"token":...}}` within `AUTH_TIMEOUT_S`; a bad token closes 4401.
Every failure of one frame becomes an `error` frame; the connection stays open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from interfaces.errors import error_code, public_message
from interfaces.runtime import Runtime
from interfaces.ws.connection import Connection
from interfaces.ws.handlers import HANDLERS, Session
from interfaces.ws.protocol import UnknownEventError, field_str, parse_frame, request_id_of
from interfaces.ws.wire import direct_writer

log = logging.getLogger(__name__)

AUTH_TIMEOUT_S = 10.0  # the contract's window for a first `connect` frame
UNAUTHORIZED_CODE = 4401
UNAVAILABLE_CODE = 1013  # "try again later": this node cannot serve sockets right now
TRACEBACK_EVERY_S = 5.0
PRESENCE_MAX_MEMBERS = 100  # larger conversations get no presence pushes (announce_presence)


def ws_endpoint(runtime: Runtime) -> Any:
    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        if runtime.hub is None or runtime.service is None:
            await websocket.close(UNAVAILABLE_CODE, "this node does not serve WebSockets")
            return
        user = await _authenticate(websocket, runtime)
        if user is None:
            await websocket.close(UNAUTHORIZED_CODE, "missing, invalid or expired token")
            return
        connection = Connection(websocket, user, direct=direct_writer(websocket.scope))
        connection.start()
        try:
            await _serve(websocket, runtime, connection)
        finally:
            await goodbye(runtime, connection)

    return endpoint


async def _authenticate(websocket: WebSocket, runtime: Runtime) -> str | None:
    token = websocket.query_params.get("token")
    header = websocket.headers.get("authorization", "")
    if not token and header.lower().startswith("bearer "):
        token = header[7:].strip()
    if token:
        return runtime.user_for_token(token)
    try:
        text = await asyncio.wait_for(websocket.receive_text(), AUTH_TIMEOUT_S)
        frame = parse_frame(text)
        if frame.event != "connect":
            return None
        user = runtime.user_for_token(field_str(frame.data, "token"))
    except Exception:  # timeout, binary frame, bad JSON, disconnect: not authenticated
        return None
    if user is not None and frame.request_id is not None:
        await websocket.send_json({"event": "ack", "id": frame.request_id, "data": {"userId": user}})
    return user


async def welcome(runtime: Runtime, connection: Connection) -> None:
    """A new device of its user: subscribed for live traffic, online, told it is connected."""
    await runtime.hub.attach(connection)
    if runtime.presence is not None and await runtime.presence.connect(connection.user_id, connection.id):
        await announce_presence(runtime, connection.user_id, True)
    connection.send("connected", {"userId": connection.user_id})


async def _serve(websocket: WebSocket, runtime: Runtime, connection: Connection) -> None:
    await welcome(runtime, connection)
    session = Session(runtime, connection)
    while not connection.closed:
        try:
            message = await websocket.receive()
        except (WebSocketDisconnect, RuntimeError):
            return
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if text is None:
            connection.send("error", {"code": "BAD_USER_INPUT", "message": "frames are JSON text, not binary"})
            continue
        await _handle(session, text)


async def _handle(session: Session, text: str) -> None:
    request_id = None
    try:
        frame = parse_frame(text)
        request_id = frame.request_id
        result = await run_event(session, frame.event, frame.data)
        if request_id is not None:
            session.connection.send("ack", result, request_id)
    except Exception as error:
        if request_id is None:
            request_id = request_id_of(text)
        session.connection.send("error", describe_error(error), request_id)


async def run_event(session: Session, event: str, data: dict[str, Any]) -> dict[str, Any]:
    """One client event through its handler; the ack's data, or an error (see describe_error)."""
    handler = HANDLERS.get(event)
    if handler is None:
        raise UnknownEventError(f"unknown event {event!r}")
    return await handler(session, data) or {}


def describe_error(error: Exception) -> dict[str, str]:
    """The `error` data a client gets: a code from the contract and a message safe to show."""
    code = error_code(error)
    if code == "INTERNAL":
        _log_internal(error)
    return {"code": _ws_code(error, code), "message": public_message(error)}


_last_traceback_at = 0.0


def _log_internal(error: Exception) -> None:
    """Every failure is logged, its traceback at most every TRACEBACK_EVERY_S: when Redis or the
    database fails, every frame fails alike, and formatting thousands of tracebacks took a third
    of the event loop exactly when the node was already short of it."""
    global _last_traceback_at
    now = time.monotonic()
    if now - _last_traceback_at >= TRACEBACK_EVERY_S:
        _last_traceback_at = now
        log.exception("ws handler failed")
    else:
        log.error("ws handler failed: %s: %s", type(error).__name__, error)


def _ws_code(error: Exception, code: str) -> str:
    from interfaces.ws.protocol import FrameTooLargeError

    if isinstance(error, UnknownEventError):
        return "UNKNOWN_EVENT"
    if isinstance(error, FrameTooLargeError):
        return "PAYLOAD_TOO_LARGE"
    return code


async def goodbye(runtime: Runtime, connection: Connection) -> None:
    """The device is gone: unsubscribed, offline if it was the user's last, its queue stopped."""
    with contextlib.suppress(Exception):
        await runtime.hub.detach(connection)
    with contextlib.suppress(Exception):
        if runtime.presence is not None and await runtime.presence.disconnect(connection.user_id, connection.id):
            await announce_presence(runtime, connection.user_id, False)
    await connection.stop()


async def announce_presence(runtime: Runtime, user: str, is_online: bool) -> None:
    """`presence_update` to everyone who shares a conversation of at most
    PRESENCE_MAX_MEMBERS members with the user: one publish per conversation, not per contact.

    Pushing every change to every member of a large group costs O(members²) frames when the
    group comes online (a 1,000-member group: a million frames); there, clients ask
    `usersOnlineStatus` for the members they show, as Slack and Discord do."""
    try:
        conversations = await runtime.read_model.presence_conversations(user, PRESENCE_MAX_MEMBERS)
        last_seen = await runtime.presence.last_seen(user)
        await runtime.hub.publish_presence(
            user, conversations, {"userId": user, "isOnline": is_online, "lastSeen": last_seen}
        )
    except Exception:
        log.exception("could not announce presence of %s", user)
