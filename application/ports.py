"""What the write side needs from infrastructure, declared here and implemented there."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable
from uuid import UUID

from eventsourcing.persistence import IntegrityError, Notification

from domain.values import MessageFacts


@dataclass(frozen=True)
class IndexedMessage:
    """One row of the message index, written in the same transaction as the message's event."""

    message_id: UUID
    conversation_id: UUID
    sender_id: str
    seq: int
    originator_version: int  # the conversation version of its MessageSent event
    client_message_id: str | None
    deleted: bool = False

    def facts(self) -> MessageFacts:
        return MessageFacts(self.message_id, self.conversation_id, self.sender_id, self.seq, self.deleted)


@dataclass
class MessageIndexChanges:
    """Index rows to write with one transaction's events (passed to `MessagingApplication.append`)."""

    added: list[IndexedMessage] = field(default_factory=list)
    deleted: list[UUID] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.added or self.deleted)


class MessageIdTakenError(IntegrityError):
    """An append named a new message whose id the index already holds: a client resent a
    message that an earlier transaction committed. Nothing of the append was written."""


@runtime_checkable
class MessageIndex(Protocol):
    """Strongly consistent lookups of message facts (implemented by the event store recorder)."""

    def lookup_messages(self, message_ids: Iterable[UUID]) -> dict[UUID, IndexedMessage]: ...

    def current_versions(self, aggregate_ids: Iterable[UUID]) -> dict[UUID, int]:
        """The latest stored version of each aggregate that has events (another node's writes
        included)."""
        ...


@runtime_checkable
class ConversationLog(Protocol):
    """One conversation's notifications (position, version, topic, state) in version order,
    read by the events table's primary key rather than by scanning the whole log."""

    def select_conversation_notifications(
        self, conversation_id: UUID, after_version: int = 0, limit: int = 1000
    ) -> list[Notification]: ...
