"""One handler per command: load, decide (the aggregate checks its rules), record.

Handlers run on the group-commit writer thread inside a `UnitOfWork`; they never save.
`HANDLERS` is the single table from command type to handler.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from application.commands import (
    AddParticipant,
    Command,
    DeleteMessage,
    EditMessage,
    MarkDelivered,
    MarkRead,
    RemoveParticipant,
    SendMessage,
    SetTyping,
    StartConversation,
)
from application.messaging import conversation_record, message_record
from application.ports import IndexedMessage
from application.results import WatermarkRecord
from application.unit_of_work import Outcome, UnitOfWork
from domain.conversation import Conversation
from domain.errors import MessageNotFoundError, NotParticipantError, UnknownParentMessageError
from domain.values import (
    ConversationType,
    conversation_id_for,
    parse_conversation_type,
    parse_message_type,
)


def start_conversation(command: StartConversation, uow: UnitOfWork) -> Outcome:
    conversation_type = parse_conversation_type(command.conversation_type)
    participants = frozenset(command.participant_ids) | {command.actor_id}
    conversation_id = conversation_id_for(conversation_type, participants, command.item_id)
    if conversation_type is not ConversationType.GROUP:
        existing = uow.find_conversation(conversation_id)
        if existing is not None:  # idempotent: the same pair (and item) has one conversation
            return Outcome(conversation_record(existing))
    conversation = Conversation.start(
        conversation_id, command.actor_id, conversation_type, participants, command.title, command.item_id
    )
    uow.add_conversation(conversation)
    return Outcome(conversation_record(conversation))


def add_participant(command: AddParticipant, uow: UnitOfWork) -> Outcome:
    conversation = uow.conversation(command.conversation_id)
    conversation.add_participant(command.actor_id, command.user_id)
    return Outcome(conversation_record(conversation))


def remove_participant(command: RemoveParticipant, uow: UnitOfWork) -> Outcome:
    conversation = uow.conversation(command.conversation_id)
    conversation.remove_participant(command.actor_id, command.user_id)
    return Outcome(conversation_record(conversation))


def send_message(command: SendMessage, uow: UnitOfWork) -> Outcome:
    message_id = command.message_id
    if command.client_message_id:
        repeated = uow.message(message_id)
        if repeated is not None:  # a retry: return the message it already created
            record, events = uow.sent_message(repeated)
            return Outcome(record, events, fixed_position=None if events else uow.app.max_position())
    conversation = uow.conversation(command.conversation_id)
    parent = None
    if command.parent_message_id is not None:
        parent_index = uow.message(command.parent_message_id)
        if parent_index is None:
            raise UnknownParentMessageError("parentMessageId names no message")
        parent = parent_index.facts()
    conversation.send_message(
        command.actor_id,
        message_id,
        command.content,
        parse_message_type(command.message_type),
        parent,
        command.client_message_id,
    )
    sent: Conversation.MessageSent = conversation.pending_events[-1]  # type: ignore[assignment]
    record = message_record(sent)
    indexed = IndexedMessage(
        message_id=message_id,
        conversation_id=conversation.id,
        sender_id=command.actor_id,
        seq=sent.seq,
        originator_version=sent.originator_version,
        client_message_id=command.client_message_id,
    )
    uow.add_message(indexed, record, sent)
    return Outcome(record)


def edit_message(command: EditMessage, uow: UnitOfWork) -> Outcome:
    indexed, conversation = _message_and_conversation(command, command.message_id, uow)
    conversation.edit_message(command.actor_id, indexed.facts(), command.content)
    edited: Conversation.MessageEdited = conversation.pending_events[-1]  # type: ignore[assignment]
    original, _ = uow.sent_message(indexed)
    return Outcome(replace(original, content=edited.content, edited_at=edited.timestamp))


def delete_message(command: DeleteMessage, uow: UnitOfWork) -> Outcome:
    indexed, conversation = _message_and_conversation(command, command.message_id, uow)
    conversation.delete_message(command.actor_id, indexed.facts())
    deleted: Conversation.MessageDeleted = conversation.pending_events[-1]  # type: ignore[assignment]
    uow.mark_message_deleted(indexed)
    original, _ = uow.sent_message(indexed)
    return Outcome(replace(original, content=None, deleted_at=deleted.timestamp))


def mark_read(command: MarkRead, uow: UnitOfWork) -> Outcome:
    conversation = uow.conversation(command.conversation_id)
    changed = conversation.mark_read(command.actor_id, command.up_to_seq)
    up_to = conversation.read_up_to.get(command.actor_id, 0)
    return Outcome(WatermarkRecord(conversation.id, command.actor_id, up_to, changed))


def mark_delivered(command: MarkDelivered, uow: UnitOfWork) -> Outcome:
    conversation = uow.conversation(command.conversation_id)
    changed = conversation.mark_delivered(command.actor_id, command.up_to_seq)
    up_to = conversation.delivered_up_to.get(command.actor_id, 0)
    return Outcome(WatermarkRecord(conversation.id, command.actor_id, up_to, changed))


def set_typing(command: SetTyping, uow: UnitOfWork) -> Outcome:
    conversation = uow.conversation(command.conversation_id)
    changed = conversation.set_typing(command.actor_id, command.is_typing)
    return Outcome(WatermarkRecord(conversation.id, command.actor_id, conversation.last_seq, changed))


def _message_and_conversation(
    command: Command, message_id: Any, uow: UnitOfWork
) -> tuple[IndexedMessage, Conversation]:
    indexed = uow.message(message_id)
    if indexed is None:
        raise MessageNotFoundError(f"no message {message_id}")
    conversation = uow.conversation(indexed.conversation_id)
    if not conversation.is_active_participant(command.actor_id):
        raise NotParticipantError(f"{command.actor_id} is not a participant of this conversation")
    return indexed, conversation


Handler = Callable[[Any, UnitOfWork], Outcome]

HANDLERS: dict[type[Command], Handler] = {
    StartConversation: start_conversation,
    AddParticipant: add_participant,
    RemoveParticipant: remove_participant,
    SendMessage: send_message,
    EditMessage: edit_message,
    DeleteMessage: delete_message,
    MarkRead: mark_read,
    MarkDelivered: mark_delivered,
    SetTyping: set_typing,
}


def new_message_ids(commands: list[Command]) -> set[Any]:
    """The ids of the messages the batch sends with a clientMessageId. Each is new unless the
    client is resending; the message index's primary key refuses a resend at the append."""
    return {
        command.message_id
        for command in commands
        if isinstance(command, SendMessage) and command.client_message_id
    }


def referenced_message_ids(commands: list[Command]) -> set[Any]:
    """The existing messages the batch's commands act on (edits, deletes, replies' parents)."""
    ids: set[Any] = set()
    for command in commands:
        if isinstance(command, SendMessage):
            if command.parent_message_id is not None:
                ids.add(command.parent_message_id)
        elif isinstance(command, (EditMessage, DeleteMessage)):
            ids.add(command.message_id)
    return ids
