"""Value objects and the pure rules on them: types, content, deterministic ids."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from uuid import UUID, NAMESPACE_URL, uuid4, uuid5

from domain.errors import (
    InvalidContentError,
    InvalidConversationTypeError,
    InvalidMessageTypeError,
    InvalidParticipantsError,
)

MAX_CONTENT_CHARS = 4000  # the product limit; also bounds an event row and a WS frame
MAX_GROUP_PARTICIPANTS = 5000  # bounds the aggregate's state; a 1,000-member group is the bench's case
MAX_USER_ID_CHARS = 128  # user ids come from JWT subjects; bound them so state and keys stay small
ALLOWED_CONTROL_CHARS = frozenset("\n\t")  # multi-line messages and pasted tables are legitimate
# What content may not hold: control characters (Unicode category Cc: exactly U+0000-U+001F and
# U+007F-U+009F) other than ALLOWED_CONTROL_CHARS, and lone surrogates (Cs: U+D800-U+DFFF), which
# are not text and cannot be encoded as UTF-8. One regex scan, not a category lookup per
# character: that loop took 10 us of a 74-character message (docs/performance.md, the tenth
# session). A test checks the class against Unicode's categories for every code point.
_CONTROL_CHARS = [chr(code) for code in (*range(0x00, 0x20), *range(0x7F, 0xA0))]
_FORBIDDEN_CHARS = re.compile(
    "[" + "".join(re.escape(char) for char in _CONTROL_CHARS if char not in ALLOWED_CONTROL_CHARS) + "\ud800-\udfff]"
)

# Deterministic ids: a retried command derives the same id and so hits the same row.
_ID_NAMESPACE = uuid5(NAMESPACE_URL, "https://loopify.example/messaging")


class ConversationType(str, Enum):
    DIRECT = "DIRECT"  # exactly two users
    GROUP = "GROUP"  # 2..N users with a title
    ITEM = "ITEM"  # a buyer and a seller talking about one marketplace item


class MessageType(str, Enum):
    TEXT = "TEXT"
    IMAGE = "IMAGE"
    FILE = "FILE"
    SYSTEM = "SYSTEM"
    OFFER = "OFFER"


@dataclass(frozen=True)
class MessageFacts:
    """What the write side must know about an existing message to authorise a command on it.

    Loaded by the application from the strongly consistent message index (written in the
    same transaction as the events), never from a read model.
    """

    message_id: UUID
    conversation_id: UUID
    sender_id: str
    seq: int
    deleted: bool


def parse_conversation_type(raw: str) -> ConversationType:
    try:
        return ConversationType(raw)
    except ValueError:
        raise InvalidConversationTypeError(f"unknown conversation type {raw!r}") from None


def parse_message_type(raw: str) -> MessageType:
    try:
        return MessageType(raw)
    except ValueError:
        allowed = ", ".join(t.value for t in MessageType)
        raise InvalidMessageTypeError(f"messageType must be one of {allowed}") from None


def normalise_content(raw: str) -> str:
    """Trim and check message content; return what will be stored."""
    if not isinstance(raw, str):
        raise InvalidContentError("content must be a string")
    content = raw.strip()
    if not content:
        raise InvalidContentError("content must not be empty")
    if len(content) > MAX_CONTENT_CHARS:
        raise InvalidContentError(f"content must be at most {MAX_CONTENT_CHARS} characters")
    forbidden = _FORBIDDEN_CHARS.search(content)
    if forbidden is not None:
        code = ord(forbidden.group())
        kind = "lone surrogate" if 0xD800 <= code <= 0xDFFF else "control character"
        raise InvalidContentError(f"content holds the {kind} U+{code:04X}")
    return content


def check_user_id(user_id: str) -> str:
    if not isinstance(user_id, str) or not user_id.strip() or len(user_id) > MAX_USER_ID_CHARS:
        raise InvalidParticipantsError(f"invalid user id {user_id!r}")
    return user_id


def conversation_id_for(
    conversation_type: ConversationType, participant_ids: frozenset[str], item_id: str | None
) -> UUID:
    """DIRECT and ITEM conversations are unique per participant set (and item): starting one
    again must find the existing one, so their id is derived from what makes them unique."""
    if conversation_type is ConversationType.GROUP:
        return uuid4()
    item_key = normalise_item_id(item_id) if conversation_type is ConversationType.ITEM else None
    key = "\x00".join([conversation_type.value, item_key or "", *sorted(participant_ids)])
    return uuid5(_ID_NAMESPACE, key)


def normalise_item_id(item_id: str | None) -> str | None:
    """Item ids are compared trimmed: " item-42" and "item-42" are the same listing."""
    return item_id.strip() or None if item_id else None


def message_id_for(conversation_id: UUID, sender_id: str, client_message_id: str | None) -> UUID:
    """A client's retry (same sender, conversation and clientMessageId) names the same message."""
    if not client_message_id:
        return uuid4()
    return uuid5(conversation_id, f"{sender_id}\x00{client_message_id}")
