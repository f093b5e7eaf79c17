"""`/graphql` over WebSocket with the `graphql-transport-ws` subprotocol (design.md §5).

One socket, from the upgrade to its close:

1. The client must offer `graphql-transport-ws`; otherwise the socket is accepted and closed
   at once with 4406, as the reference server (graphql-ws) does.
2. `connection_init` must come within `INIT_TIMEOUT_S` (4408), once (4429). Its payload
   `{token}` (or `{authorization: "Bearer …"}`), else the upgrade's `Authorization: Bearer`
   header, names the user. A missing, invalid or expired token closes with 4403 Forbidden:
   the spec's code for a refused `connection_init`. 4401 Unauthorized is what the spec
   sends for an operation requested before the acknowledgement.
3. Once accepted, the socket is one device of its user on this node's hub (and counts for
   presence, as a /ws socket does) and gets `connection_ack {userId}`.
4. Operations: `subscribe` before the ack is 4401; with the id of an active operation, 4409;
   `complete` from the client stops one (unknown ids are ignored, as the spec allows).
   Malformed or unexpected messages close with 4400.
5. `ping` is answered with `pong` (same payload); the server sends its own `ping` every
   `KEEPALIVE_PING_S` after the ack.

Messages of one socket are handled in order, and a new subscription is live before the next
message is read: a client that sends `subscribe` then `ping` knows, when `pong` arrives, that
nothing published from then on can be missed. A failure closes this socket only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect
from tartiflette import Engine

from interfaces.errors import error_code, public_message
from interfaces.graphql.context import RequestContext
from interfaces.graphql.limits import QueryRefusedError, check_query
from interfaces.graphql_ws.device import SubscriberDevice
from interfaces.graphql_ws.feeds import OperationScope
from interfaces.graphql_ws.operations import run_operation
from interfaces.graphql_ws.protocol import (
    BAD_REQUEST,
    CONNECTION_INIT_TIMEOUT,
    FORBIDDEN,
    INTERNAL_SERVER_ERROR,
    SUBPROTOCOL,
    SUBPROTOCOL_NOT_ACCEPTABLE,
    SUBSCRIBER_ALREADY_EXISTS,
    TOO_MANY_INIT_REQUESTS,
    UNAUTHORIZED,
    ClientMessage,
    Complete,
    ConnectionInit,
    Ping,
    Pong,
    ProtocolViolation,
    Subscribe,
    close_reason,
    connection_ack,
    error_message,
    parse_message,
    ping,
    pong,
)
from interfaces.runtime import Runtime
from interfaces.ws.endpoint import announce_presence

log = logging.getLogger(__name__)

INIT_TIMEOUT_S = 10.0  # the same window /ws gives a first `connect` frame
# Browsers can neither send nor see WebSocket-level pings. A protocol ping this often keeps
# proxies with 30-60 s idle timeouts from cutting quiet sockets, and lets clients that watch
# for it notice a dead link. (uvicorn's own WebSocket pings find dead peers on the server side.)
KEEPALIVE_PING_S = 12.0
# How long reading waits for a new subscription to go live. Its access check waits at most
# 5 s for read-your-writes; past this the socket reads on rather than stall its other traffic.
LIVE_WAIT_S = 10.0
MAX_OPERATIONS = 100  # active operations per socket: a screen needs a handful; bounds memory
UNAVAILABLE_CODE = 1013  # "try again later": this node does not serve subscriptions


def graphql_ws_endpoint(runtime: Runtime, engine_holder: dict[str, Engine]) -> Any:
    async def endpoint(websocket: WebSocket) -> None:
        if SUBPROTOCOL not in websocket.scope.get("subprotocols", []):
            await websocket.accept()
            await websocket.close(SUBPROTOCOL_NOT_ACCEPTABLE, "Subprotocol not acceptable")
            return
        await websocket.accept(subprotocol=SUBPROTOCOL)
        if runtime.hub is None or runtime.read_model is None:
            await websocket.close(UNAVAILABLE_CODE, "this node does not serve subscriptions")
            return
        await GraphQLWsSocket(websocket, runtime, engine_holder["engine"]).serve()

    return endpoint


class GraphQLWsSocket:
    def __init__(self, websocket: WebSocket, runtime: Runtime, engine: Engine) -> None:
        self.websocket = websocket
        self.runtime = runtime
        self.engine = engine
        self.user: str | None = None
        self.device: SubscriberDevice | None = None
        self.init_received = False
        self.acknowledged = False
        self.operations: dict[str, asyncio.Task[None]] = {}
        self._closed = False
        self._send_lock = asyncio.Lock()
        self._chores: set[asyncio.Task[None]] = set()  # timers and closes started from callbacks
        self._handlers: dict[type, Any] = {
            ConnectionInit: self._on_connection_init,
            Ping: self._on_ping,
            Pong: self._on_pong,
            Subscribe: self._on_subscribe,
            Complete: self._on_complete,
        }

    # ---- the receive loop --------------------------------------------------------------------

    async def serve(self) -> None:
        self._start(self._close_unless_initialised())
        try:
            while not self._closed:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                try:
                    text = message.get("text")
                    if text is None:
                        raise ProtocolViolation(BAD_REQUEST, "Invalid message: messages are JSON text")
                    await self._handle(parse_message(text))
                except ProtocolViolation as violation:
                    await self.close(violation.code, violation.reason)
                except Exception:
                    log.exception("graphql-ws socket failed while handling a message")
                    await self.close(INTERNAL_SERVER_ERROR, "Internal server error")
        except (WebSocketDisconnect, RuntimeError):
            return  # the client went away
        finally:
            await self._tear_down()

    async def _handle(self, message: ClientMessage) -> None:
        await self._handlers[type(message)](message)

    # ---- connection ----------------------------------------------------------------------------

    async def _on_connection_init(self, message: ConnectionInit) -> None:
        if self.init_received:
            raise ProtocolViolation(TOO_MANY_INIT_REQUESTS, "Too many initialisation requests")
        self.init_received = True
        user = self.runtime.user_for_token(self._token(message.payload))
        if user is None:
            raise ProtocolViolation(FORBIDDEN, "Forbidden: missing, invalid or expired token")
        self.user = user
        self.device = SubscriberDevice(self.websocket, user, self._on_overflow)
        await self.runtime.hub.attach(self.device)
        presence = self.runtime.presence
        if presence is not None and await presence.connect(user, self.device.id):
            await announce_presence(self.runtime, user, True)
        self.acknowledged = True
        await self.send(connection_ack({"userId": user}))
        self._start(self._keep_alive())

    def _token(self, payload: dict[str, Any]) -> str | None:
        token = payload.get("token")
        if isinstance(token, str) and token:
            return token
        for header in (payload.get("authorization"), payload.get("Authorization"), self.websocket.headers.get("authorization")):
            if isinstance(header, str):
                scheme, _, value = header.partition(" ")
                if scheme.lower() == "bearer" and value.strip():
                    return value.strip()
        return None

    async def _on_ping(self, message: Ping) -> None:
        await self.send(pong(message.payload))

    async def _on_pong(self, message: Pong) -> None:
        """An answer to our ping, or a client's one-way heartbeat: nothing to do."""

    # ---- operations ----------------------------------------------------------------------------

    async def _on_subscribe(self, message: Subscribe) -> None:
        if not self.acknowledged or self.device is None:
            raise ProtocolViolation(UNAUTHORIZED, "Unauthorized")
        if message.id in self.operations:
            raise ProtocolViolation(SUBSCRIBER_ALREADY_EXISTS, f"Subscriber for {message.id} already exists")
        if len(self.operations) >= MAX_OPERATIONS:
            await self._refuse(message.id, "BAD_USER_INPUT", f"at most {MAX_OPERATIONS} operations per socket")
            return
        try:
            check_query(message.query, message.variables, allow_introspection=self.runtime.is_development)
        except QueryRefusedError as refusal:
            await self._refuse(message.id, error_code(refusal), public_message(refusal))
            return
        scope = OperationScope(self.device)
        request = RequestContext(runtime=self.runtime, user_id=self.user)
        task = asyncio.create_task(
            run_operation(self.engine, request, scope, message, self.send), name=f"graphql-ws-{message.id}"
        )
        self.operations[message.id] = task
        task.add_done_callback(lambda done: self._forget(message.id, done))
        await asyncio.wait([scope.live, task], timeout=LIVE_WAIT_S, return_when=asyncio.FIRST_COMPLETED)

    async def _on_complete(self, message: Complete) -> None:
        task = self.operations.pop(message.id, None)
        if task is not None:
            task.cancel()  # the client stopped listening: no `complete` goes back

    async def _refuse(self, operation_id: str, code: str, text: str) -> None:
        await self.send(error_message(operation_id, [{"message": text, "extensions": {"code": code}}]))

    def _forget(self, operation_id: str, task: asyncio.Task[None]) -> None:
        if self.operations.get(operation_id) is task:  # the id may already serve a new operation
            del self.operations[operation_id]

    # ---- sending and closing -------------------------------------------------------------------

    async def send(self, text: str) -> None:
        """One message to the client; operations and control messages never interleave bytes."""
        if self._closed:
            return
        async with self._send_lock:
            if self._closed:
                return
            try:
                await self.websocket.send_text(text)
            except Exception:  # the socket went away; the receive loop ends the session
                self._closed = True

    async def close(self, code: int, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        # Operations may be stuck sending to a client that stopped reading: stop them first,
        # so the close frame does not wait behind them.
        for task in self.operations.values():
            task.cancel()
        async with self._send_lock:
            with contextlib.suppress(Exception):
                await self.websocket.close(code, close_reason(reason))

    def _on_overflow(self, code: int, reason: str) -> None:
        self._start(self.close(code, reason))

    async def _close_unless_initialised(self) -> None:
        await asyncio.sleep(INIT_TIMEOUT_S)
        if not self.init_received:
            await self.close(CONNECTION_INIT_TIMEOUT, "Connection initialisation timeout")

    async def _keep_alive(self) -> None:
        while not self._closed:
            await asyncio.sleep(KEEPALIVE_PING_S)
            await self.send(ping())

    def _start(self, chore: Any) -> None:
        task = asyncio.create_task(chore)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    async def _tear_down(self) -> None:
        self._closed = True
        current = asyncio.current_task()
        tasks = [task for task in (*self.operations.values(), *self._chores) if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.operations.clear()
        if self.device is None:
            return
        with contextlib.suppress(Exception):
            await self.runtime.hub.detach(self.device)
        with contextlib.suppress(Exception):
            presence = self.runtime.presence
            if presence is not None and await presence.disconnect(self.device.user_id, self.device.id):
                await announce_presence(self.runtime, self.device.user_id, False)
        await self.device.stop()
