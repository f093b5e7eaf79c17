"""What commands return: plain records built from write-side state, plus a log position."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, TypeVar
from uuid import UUID

T = TypeVar("T")


@dataclass(frozen=True)
class ConversationRecord:
    id: UUID
    type: str
    title: str | None
    item_id: str | None
    participant_ids: tuple[str, ...]
    started_by: str
    last_seq: int
    created_at: datetime
    updated_at: datetime
    read_up_to: dict[str, int] = field(default_factory=dict)
    delivered_up_to: dict[str, int] = field(default_factory=dict)
    inactive_ids: tuple[str, ...] = ()  # people who left a group (kept for their history)


@dataclass(frozen=True)
class MessageRecord:
    id: UUID
    conversation_id: UUID
    sender_id: str
    content: str | None  # None once deleted
    message_type: str
    parent_message_id: UUID | None
    seq: int
    client_message_id: str | None
    created_at: datetime
    edited_at: datetime | None = None
    deleted_at: datetime | None = None


@dataclass(frozen=True)
class WatermarkRecord:
    """The result of mark_read / mark_delivered / set_typing: did anything change?"""

    conversation_id: UUID
    user_id: str
    up_to_seq: int
    changed: bool


@dataclass(frozen=True)
class CommandResult(Generic[T]):
    value: T
    # Notification id of the command's last event in the log (or, for an idempotent repeat,
    # a position at or after the original's): read models that passed it show the effect.
    # None when the command changed nothing.
    position: int | None
