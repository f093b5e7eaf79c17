"""Opaque Relay cursors: the keyset position of a row, as base64url of a small versioned payload.

A cursor is `base64url(JSON [version, kind, *key])` without padding. Clients must treat it as
opaque; the version lets the key change later without misreading old cursors, and the kind
stops a message cursor from being replayed against the conversation list. Decoding is strict
(canonical form only, typed and bounded values) so a forged cursor can never reach SQL as
anything but a well-formed key, and every failure is one `InvalidCursorError` (BAD_USER_INPUT).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID

from domain.errors import InvalidInputError

CURSOR_VERSION = 1
# Real cursors are under 90 characters; refuse to decode anything much bigger before any work.
MAX_CURSOR_CHARS = 256
MAX_BIGINT = 2**63 - 1  # seq and position are Postgres bigints: larger keys cannot exist
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

CONVERSATIONS, MESSAGES, SEARCH = "conv", "msg", "search"


class InvalidCursorError(InvalidInputError):
    """The `after` cursor was not produced by this server for this list."""


# ---- conversations: (activity_at, id), the inbox order ---------------------------------------


def encode_conversation_cursor(activity_at: datetime, conversation_id: UUID) -> str:
    return _encode(CONVERSATIONS, _to_micros(activity_at), conversation_id.hex)


def decode_conversation_cursor(cursor: str) -> tuple[datetime, UUID]:
    micros, hex_id = _decode(cursor, CONVERSATIONS, 2)
    if not _is_bigint(micros, allow_negative=True) or not isinstance(hex_id, str):
        raise InvalidCursorError("invalid cursor")
    try:
        activity_at, conversation_id = _EPOCH + timedelta(microseconds=micros), UUID(hex=hex_id)
    except (OverflowError, ValueError):
        raise InvalidCursorError("invalid cursor") from None
    if conversation_id.hex != hex_id:  # `UUID` also accepts dashes and braces; we never write them
        raise InvalidCursorError("invalid cursor")
    return activity_at, conversation_id


# ---- messages of one conversation: seq ---------------------------------------------------------


def encode_message_cursor(seq: int) -> str:
    return _encode(MESSAGES, seq)


def decode_message_cursor(cursor: str) -> int:
    return _decode_int(cursor, MESSAGES)


# ---- search results: the log position of the message --------------------------------------------


def encode_search_cursor(position: int) -> str:
    return _encode(SEARCH, position)


def decode_search_cursor(cursor: str) -> int:
    return _decode_int(cursor, SEARCH)


# ---- the envelope ---------------------------------------------------------------------------------


def _encode(kind: str, *key: Any) -> str:
    payload = json.dumps([CURSOR_VERSION, kind, *key], separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode("utf-8")).rstrip(b"=").decode("ascii")


def _decode(cursor: Any, kind: str, arity: int) -> list[Any]:
    if not isinstance(cursor, str) or len(cursor) > MAX_CURSOR_CHARS or not _BASE64URL.fullmatch(cursor):
        raise InvalidCursorError("invalid cursor")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        payload = json.loads(raw.decode("utf-8"))
    except (binascii.Error, ValueError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise InvalidCursorError("invalid cursor") from None
    if (
        not isinstance(payload, list)
        or len(payload) != arity + 2
        or payload[0] != CURSOR_VERSION
        or payload[1] != kind
        or _encode(*payload[1:]) != cursor  # canonical only: one key, one spelling
    ):
        raise InvalidCursorError("invalid cursor")
    return payload[2:]


def _decode_int(cursor: str, kind: str) -> int:
    (value,) = _decode(cursor, kind, 1)
    if not _is_bigint(value):
        raise InvalidCursorError("invalid cursor")
    return int(value)


def _is_bigint(value: Any, *, allow_negative: bool = False) -> bool:
    # `bool` is an `int` in Python; `true` in a forged payload must not pass as 1.
    if type(value) is not int:
        return False
    return (-MAX_BIGINT if allow_negative else 0) <= value <= MAX_BIGINT


def _to_micros(moment: datetime) -> int:
    # Exact integer microseconds: a float or a reformatted string could shift the key by one µs
    # and skip or repeat a row at a page boundary.
    delta = moment.astimezone(timezone.utc) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
