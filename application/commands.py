"""Commands: one immutable object per intent, one handler each (see `handlers.HANDLERS`)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from uuid import UUID

from domain.values import message_id_for


@dataclass(frozen=True)
class Command:
    actor_id: str  # the authenticated user on whose behalf the command runs


@dataclass(frozen=True)
class StartConversation(Command):
    conversation_type: str
    participant_ids: tuple[str, ...]
    title: str | None = None
    item_id: str | None = None


@dataclass(frozen=True)
class AddParticipant(Command):
    conversation_id: UUID
    user_id: str


@dataclass(frozen=True)
class RemoveParticipant(Command):
    conversation_id: UUID
    user_id: str


@dataclass(frozen=True)
class SendMessage(Command):
    conversation_id: UUID
    content: str
    message_type: str = "TEXT"
    parent_message_id: UUID | None = None
    client_message_id: str | None = None

    @cached_property
    def message_id(self) -> UUID:
        """The id of the message this command sends (`message_id_for`: a client's retry names
        the same message). Computed once: a batch's index check and the handler both ask."""
        return message_id_for(self.conversation_id, self.actor_id, self.client_message_id)


@dataclass(frozen=True)
class EditMessage(Command):
    message_id: UUID
    content: str


@dataclass(frozen=True)
class DeleteMessage(Command):
    message_id: UUID


@dataclass(frozen=True)
class MarkRead(Command):
    conversation_id: UUID
    up_to_seq: int | None = None  # None: everything sent so far


@dataclass(frozen=True)
class MarkDelivered(Command):
    conversation_id: UUID
    up_to_seq: int


@dataclass(frozen=True)
class SetTyping(Command):
    conversation_id: UUID
    is_typing: bool
