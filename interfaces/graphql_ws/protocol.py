"""The `graphql-transport-ws` wire format (the protocol of the `graphql-ws` npm client):
parsing client messages, building server messages, and the close codes.

Every message is a JSON object with a `type`, an optional `id` and an optional `payload`.
Anything that is not one of the client's message types in the right shape is a protocol
violation: the socket closes with 4400 at once (the spec leaves no room for error replies).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

SUBPROTOCOL = "graphql-transport-ws"

# Close codes, as the spec and the reference server (graphql-ws) send them.
BAD_REQUEST = 4400  # malformed or unexpected message
UNAUTHORIZED = 4401  # `subscribe` before `connection_ack`
FORBIDDEN = 4403  # `connection_init` refused: missing, invalid or expired token
SUBPROTOCOL_NOT_ACCEPTABLE = 4406  # the client did not offer `graphql-transport-ws`
CONNECTION_INIT_TIMEOUT = 4408  # no `connection_init` within the allowed time
SUBSCRIBER_ALREADY_EXISTS = 4409  # `subscribe` with the id of an active operation
TOO_MANY_INIT_REQUESTS = 4429  # a second `connection_init`
INTERNAL_SERVER_ERROR = 4500  # the server failed while handling a message (graphql-ws's code)

CONNECTION_INIT, CONNECTION_ACK = "connection_init", "connection_ack"
PING, PONG = "ping", "pong"
SUBSCRIBE, NEXT, ERROR, COMPLETE = "subscribe", "next", "error", "complete"

# A subscribe message carries a document (at most 20,000 characters, see graphql/limits.py)
# and variables holding at most one 4,000-character message: 64 KB is ample, and bounds what
# the server parses before it knows who is asking.
MAX_MESSAGE_CHARS = 64 * 1024
# graphql-ws ids are UUIDs (36 characters); the 4409 close reason echoes the id, and a close
# frame carries at most 123 bytes of reason.
MAX_OPERATION_ID_CHARS = 64
MAX_CLOSE_REASON_BYTES = 123  # RFC 6455: 125 bytes of control payload, 2 of them the code


class ProtocolViolation(Exception):
    """The client broke the protocol; the socket closes with `code` and `reason`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class ConnectionInit:
    payload: dict[str, Any]


@dataclass(frozen=True)
class Ping:
    payload: dict[str, Any] | None


@dataclass(frozen=True)
class Pong:
    payload: dict[str, Any] | None


@dataclass(frozen=True)
class Subscribe:
    id: str
    query: str
    operation_name: str | None
    variables: dict[str, Any] | None


@dataclass(frozen=True)
class Complete:
    id: str


ClientMessage = ConnectionInit | Ping | Pong | Subscribe | Complete


def parse_message(text: str) -> ClientMessage:
    """One client message, or a `ProtocolViolation` (4400) saying what is wrong with it."""
    if len(text) > MAX_MESSAGE_CHARS:
        raise _invalid(f"message larger than {MAX_MESSAGE_CHARS} characters")
    try:
        message = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise _invalid("message is not JSON") from None
    if not isinstance(message, dict):
        raise _invalid("message is not a JSON object")
    kind = message.get("type")
    if kind == CONNECTION_INIT:
        return ConnectionInit(_optional_object(message, "payload") or {})
    if kind == PING:
        return Ping(_optional_object(message, "payload"))
    if kind == PONG:
        return Pong(_optional_object(message, "payload"))
    if kind == SUBSCRIBE:
        return _subscribe(message)
    if kind == COMPLETE:
        return Complete(_operation_id(message))
    raise _invalid(f"unexpected message type {str(kind)[:32]!r}")


def _subscribe(message: dict[str, Any]) -> Subscribe:
    operation_id = _operation_id(message)
    payload = message.get("payload")
    if not isinstance(payload, dict):
        raise _invalid("subscribe needs a payload object")
    query = payload.get("query")
    if not isinstance(query, str):
        raise _invalid("subscribe payload needs a query string")
    operation_name = payload.get("operationName")
    if operation_name is not None and not isinstance(operation_name, str):
        raise _invalid("operationName must be a string or null")
    variables = _optional_object(payload, "variables")
    _optional_object(payload, "extensions")  # allowed by the spec, unused here
    return Subscribe(operation_id, query, operation_name, variables)


def _operation_id(message: dict[str, Any]) -> str:
    operation_id = message.get("id")
    if not isinstance(operation_id, str) or not operation_id:
        raise _invalid(f"{message.get('type')} needs a non-empty string id")
    if len(operation_id) > MAX_OPERATION_ID_CHARS:
        raise _invalid(f"ids are limited to {MAX_OPERATION_ID_CHARS} characters")
    return operation_id


def _optional_object(container: dict[str, Any], name: str) -> dict[str, Any] | None:
    value = container.get(name)
    if value is not None and not isinstance(value, dict):
        raise _invalid(f"{name} must be an object or null")
    return value


def _invalid(reason: str) -> ProtocolViolation:
    return ProtocolViolation(BAD_REQUEST, f"Invalid message: {reason}")


# ---- server -> client -------------------------------------------------------------------------


def connection_ack(payload: dict[str, Any] | None = None) -> str:
    return _encode({"type": CONNECTION_ACK, "payload": payload} if payload else {"type": CONNECTION_ACK})


def ping() -> str:
    return _encode({"type": PING})


def pong(payload: dict[str, Any] | None = None) -> str:
    return _encode({"type": PONG, "payload": payload} if payload is not None else {"type": PONG})


def next_message(operation_id: str, result: dict[str, Any]) -> str:
    return _encode({"id": operation_id, "type": NEXT, "payload": result})


def error_message(operation_id: str, errors: list[dict[str, Any]]) -> str:
    return _encode({"id": operation_id, "type": ERROR, "payload": errors})


def complete_message(operation_id: str) -> str:
    return _encode({"id": operation_id, "type": COMPLETE})


def close_reason(reason: str) -> str:
    """The reason cut to what a close frame can carry, never splitting a character."""
    return reason.encode()[:MAX_CLOSE_REASON_BYTES].decode(errors="ignore")


def _encode(message: dict[str, Any]) -> str:
    return orjson.dumps(message).decode()
