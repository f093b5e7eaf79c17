"""The /ws wire format (design.md §4): parsing client frames and validating their fields.

Client → server: `{"event": NAME, "data": {...}, "id": OPTIONAL}`. Anything else is answered
with an `error` frame and the connection stays open.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

import orjson

from interfaces.errors import BadRequestError

MAX_FRAME_BYTES = 64 * 1024  # a 4,000-character message is at most 16 KB of UTF-8 in JSON
MAX_REQUEST_ID_CHARS = 128  # ids are echoed back: bound what we echo


class FrameTooLargeError(BadRequestError):
    """The frame is larger than MAX_FRAME_BYTES."""


class UnknownEventError(BadRequestError):
    """The event name is not part of the protocol."""


@dataclass(frozen=True)
class ClientFrame:
    event: str
    data: dict[str, Any]
    request_id: Any = None


def parse_frame(text: str) -> ClientFrame:
    if len(text) > MAX_FRAME_BYTES:
        raise FrameTooLargeError(f"frames are limited to {MAX_FRAME_BYTES} bytes")
    try:
        payload = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise BadRequestError('a frame is a JSON object: {"event": ..., "data": {...}, "id": ...}') from None
    if not isinstance(payload, dict):
        raise BadRequestError("a frame is a JSON object")
    event, data, request_id = payload.get("event"), payload.get("data", {}), payload.get("id")
    if not isinstance(event, str) or not event:
        raise BadRequestError('the frame has no "event" name')
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise BadRequestError('"data" must be an object')
    if request_id is not None and not (
        isinstance(request_id, (int, str)) and not isinstance(request_id, bool) and len(str(request_id)) <= MAX_REQUEST_ID_CHARS
    ):
        raise BadRequestError(f'"id" must be a string or number of at most {MAX_REQUEST_ID_CHARS} characters')
    return ClientFrame(event, data, request_id)


def request_id_of(text: str) -> Any:
    """Best effort: the id of a frame that failed validation, so the error can carry it."""
    try:
        payload = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    candidate = payload.get("id") if isinstance(payload, dict) else None
    if isinstance(candidate, (int, str)) and not isinstance(candidate, bool) and len(str(candidate)) <= MAX_REQUEST_ID_CHARS:
        return candidate
    return None


# ---- field readers ---------------------------------------------------------------------------


def field_id(data: dict[str, Any], name: str) -> UUID:
    raw = data.get(name)
    try:
        return UUID(str(raw)) if raw is not None else _missing(name)
    except ValueError:
        raise BadRequestError(f"{name} is not a valid id") from None


def optional_id(data: dict[str, Any], name: str) -> UUID | None:
    return field_id(data, name) if data.get(name) is not None else None


def field_str(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str):
        raise BadRequestError(f"{name} must be a string")
    return value


def optional_str(data: dict[str, Any], name: str) -> str | None:
    return field_str(data, name) if data.get(name) is not None else None


def field_bool(data: dict[str, Any], name: str) -> bool:
    value = data.get(name)
    if not isinstance(value, bool):
        raise BadRequestError(f"{name} must be true or false")
    return value


def field_int(data: dict[str, Any], name: str) -> int:
    value = data.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadRequestError(f"{name} must be a non-negative integer")
    return value


def optional_int(data: dict[str, Any], name: str) -> int | None:
    return field_int(data, name) if data.get(name) is not None else None


def _missing(name: str) -> Any:
    raise BadRequestError(f"{name} is required")
