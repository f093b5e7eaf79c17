"""What read-model queries return: immutable views, shaped for the GraphQL and WebSocket contracts.

Views carry plain values only (no rows, no connections), so the interfaces can serialise them
after the database connection went back to the pool.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar
from uuid import UUID

T = TypeVar("T")

SENT, DELIVERED, READ = "SENT", "DELIVERED", "READ"


@dataclass(frozen=True)
class ParticipantView:
    user_id: str
    is_active: bool
    joined_at: datetime  # the latest join: a member who left and came back shows the return
    last_read_seq: int
    last_read_at: datetime | None
    last_delivered_seq: int


@dataclass(frozen=True)
class MessageView:
    id: UUID
    conversation_id: UUID
    sender_id: str
    content: str | None  # None once deleted: the message keeps its place, the log keeps the text
    message_type: str
    parent_message_id: UUID | None
    seq: int
    client_message_id: str | None
    created_at: datetime
    edited_at: datetime | None
    deleted_at: datetime | None
    delivery_status: str  # SENT | DELIVERED | READ, as seen by its sender


@dataclass(frozen=True)
class ConversationView:
    id: UUID
    type: str
    title: str | None
    item_id: str | None
    participants: tuple[ParticipantView, ...]  # active first, then people who left
    last_message: MessageView | None
    last_message_at: datetime | None
    unread_count: int  # for the viewer who asked
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class OnlineStatusView:
    user_id: str
    is_online: bool
    last_seen: datetime | None


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a Relay connection: (cursor, node) pairs, newest first."""

    items: list[tuple[str, T]]
    has_next_page: bool
    end_cursor: str | None


def delivery_status(sender_id: str, seq: int, participants: Iterable[ParticipantView]) -> str:
    """READ once every other active participant read it, DELIVERED once every one received it.

    People who left are not waited for: they will never read it. With nobody else left, the
    message counts as read (there is nobody it is still waiting for).
    """
    others = [p for p in participants if p.is_active and p.user_id != sender_id]
    if all(p.last_read_seq >= seq for p in others):
        return READ
    if all(p.last_delivered_seq >= seq for p in others):
        return DELIVERED
    return SENT
