"""The `Conversation` aggregate: the only place that decides what may happen in a chat.

Every command method checks all of its guards first and only then triggers an event, so a
refused command leaves the aggregate untouched. The methods decorated with `@event` are the
mutators: they run again on every replay of old events, so they only assign state and never
raise.

State is O(participants), never O(messages): per participant an active flag, a read and a
delivered watermark and a typing flag, plus the last `seq`. What the write side must know about
an individual message (its sender, whether it was deleted) is passed in as `MessageFacts`,
looked up by the application from the message index that is written in the same transaction
as the events.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain.errors import (
    InvalidParticipantsError,
    MessageNotFoundError,
    MessageDeletedError,
    NotMessageSenderError,
    NotParticipantError,
    UnknownParentMessageError,
    UnsupportedOperationError,
)
from domain.values import (
    MAX_GROUP_PARTICIPANTS,
    ConversationType,
    MessageFacts,
    MessageType,
    check_user_id,
    normalise_content,
    normalise_item_id,
)

TWO_PARTY_TYPES = (ConversationType.DIRECT, ConversationType.ITEM)
MAX_TITLE_CHARS = 200  # shown in inbox rows and push notifications; longer titles are abuse


class Conversation(Aggregate, created_event_name="ConversationStarted"):
    # Stable topics: the stored log names these strings, not module paths, so moving or
    # renaming the Python classes never orphans old events (see docs/events.md).
    TOPIC = "loopify:Conversation"

    class Event(Aggregate.Event):
        """Every conversation event names who caused it, for audit and authorisation."""

        actor_id: str

    class Snapshot(Aggregate.Snapshot):
        TOPIC = "loopify:Conversation.Snapshot"

    class ConversationStarted(Event, Aggregate.Created):
        TOPIC = "loopify:Conversation.ConversationStarted"
        conversation_type: str
        participant_ids: list[str]
        title: str | None
        item_id: str | None

    # The library looks for a `Created` class; alias it so the log names the real event.
    Created = ConversationStarted

    class ParticipantJoined(Event):
        TOPIC = "loopify:Conversation.ParticipantJoined"
        user_id: str
        since_seq: int  # the conversation's last seq when they joined: earlier messages count as read

    class ParticipantLeft(Event):
        TOPIC = "loopify:Conversation.ParticipantLeft"
        user_id: str

    class MessageSent(Event):
        TOPIC = "loopify:Conversation.MessageSent"
        message_id: UUID
        seq: int
        content: str
        message_type: str
        parent_message_id: UUID | None
        client_message_id: str | None

    class MessageEdited(Event):
        TOPIC = "loopify:Conversation.MessageEdited"
        message_id: UUID
        seq: int
        content: str

    class MessageDeleted(Event):
        TOPIC = "loopify:Conversation.MessageDeleted"
        message_id: UUID
        seq: int

    class MessageRead(Event):
        TOPIC = "loopify:Conversation.MessageRead"
        up_to_seq: int

    class MessagesDelivered(Event):
        TOPIC = "loopify:Conversation.MessagesDelivered"
        up_to_seq: int

    class TypingChanged(Event):
        TOPIC = "loopify:Conversation.TypingChanged"
        is_typing: bool

    # ---- creation -------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        conversation_id: UUID,
        actor_id: str,
        conversation_type: ConversationType,
        participant_ids: frozenset[str],
        title: str | None = None,
        item_id: str | None = None,
    ) -> Conversation:
        """Start a conversation; the actor is always one of its participants."""
        participants = check_participant_set(conversation_type, participant_ids | {actor_id})
        title = (title or "").strip() or None
        if title and len(title) > MAX_TITLE_CHARS:
            raise InvalidParticipantsError(f"title must be at most {MAX_TITLE_CHARS} characters")
        item_id = normalise_item_id(item_id) if conversation_type is ConversationType.ITEM else None
        if conversation_type is ConversationType.ITEM and item_id is None:
            raise InvalidParticipantsError("an ITEM conversation needs an itemId")
        return cls._create(
            cls.ConversationStarted,
            id=conversation_id,
            actor_id=actor_id,
            conversation_type=conversation_type.value,
            participant_ids=sorted(participants),
            title=title,
            item_id=item_id,
        )

    def __init__(
        self,
        actor_id: str,
        conversation_type: str,
        participant_ids: list[str],
        title: str | None,
        item_id: str | None,
    ) -> None:
        self.conversation_type = conversation_type
        self.started_by = actor_id
        self.title = title
        self.item_id = item_id
        self.active: dict[str, bool] = {user: True for user in participant_ids}
        self.read_up_to: dict[str, int] = {user: 0 for user in participant_ids}
        self.delivered_up_to: dict[str, int] = {user: 0 for user in participant_ids}
        self.typing: dict[str, bool] = {}
        self.last_seq = 0

    # ---- queries on state -----------------------------------------------------------------

    @property
    def type(self) -> ConversationType:
        return ConversationType(self.conversation_type)

    def is_active_participant(self, user_id: str) -> bool:
        return self.active.get(user_id, False)

    @property
    def participant_ids(self) -> list[str]:
        return sorted(user for user, is_active in self.active.items() if is_active)

    def typing_users(self) -> list[str]:
        return sorted(user for user, is_typing in self.typing.items() if is_typing)

    # ---- membership -----------------------------------------------------------------------

    def add_participant(self, actor_id: str, user_id: str) -> None:
        self._require_active(actor_id)
        if self.type is not ConversationType.GROUP:
            raise UnsupportedOperationError("only GROUP conversations take new participants")
        check_user_id(user_id)
        if self.is_active_participant(user_id):
            raise InvalidParticipantsError(f"{user_id} is already a participant")
        if len(self.participant_ids) >= MAX_GROUP_PARTICIPANTS:
            raise InvalidParticipantsError(f"a group holds at most {MAX_GROUP_PARTICIPANTS} users")
        self._participant_joined(actor_id=actor_id, user_id=user_id, since_seq=self.last_seq)

    @event(ParticipantJoined)
    def _participant_joined(self, actor_id: str, user_id: str, since_seq: int) -> None:
        self.active[user_id] = True
        # A newcomer sees the history, but it is not news to them: it starts out read.
        self.read_up_to[user_id] = max(self.read_up_to.get(user_id, 0), since_seq)
        self.delivered_up_to[user_id] = max(self.delivered_up_to.get(user_id, 0), since_seq)

    def remove_participant(self, actor_id: str, user_id: str) -> None:
        """A member may leave; the group's starter may also remove others."""
        self._require_active(actor_id)
        if self.type is not ConversationType.GROUP:
            raise UnsupportedOperationError("only GROUP conversations can be left")
        if actor_id != user_id and actor_id != self.started_by:
            raise NotParticipantError("only the group's starter may remove other members")
        if not self.is_active_participant(user_id):
            raise InvalidParticipantsError(f"{user_id} is not a participant")
        self._participant_left(actor_id=actor_id, user_id=user_id)

    @event(ParticipantLeft)
    def _participant_left(self, actor_id: str, user_id: str) -> None:
        self.active[user_id] = False
        self.typing.pop(user_id, None)

    # ---- messages -------------------------------------------------------------------------

    def send_message(
        self,
        sender_id: str,
        message_id: UUID,
        content: str,
        message_type: MessageType = MessageType.TEXT,
        parent: MessageFacts | None = None,
        client_message_id: str | None = None,
    ) -> None:
        self._require_active(sender_id)
        content = normalise_content(content)
        if parent is not None and parent.conversation_id != self.id:
            raise UnknownParentMessageError("parentMessageId names a message of another conversation")
        # Triggered directly, not by calling the decorated `_message_sent`: the decorator's
        # argument coercion was a third of this call, paid by every message (7 us).
        self.trigger_event(
            self.MessageSent,
            actor_id=sender_id,
            message_id=message_id,
            seq=self.last_seq + 1,
            content=content,
            message_type=message_type.value,
            parent_message_id=parent.message_id if parent else None,
            client_message_id=client_message_id,
        )

    @event(MessageSent)
    def _message_sent(
        self,
        actor_id: str,
        message_id: UUID,
        seq: int,
        content: str,
        message_type: str,
        parent_message_id: UUID | None,
        client_message_id: str | None,
    ) -> None:
        self.last_seq = seq
        # Sending implies the sender has read and received everything up to their message,
        # and stops their typing indicator, as every chat client shows it.
        self.read_up_to[actor_id] = seq
        self.delivered_up_to[actor_id] = seq
        self.typing.pop(actor_id, None)

    def edit_message(self, editor_id: str, message: MessageFacts, content: str) -> None:
        self._require_own_live_message(editor_id, message)
        content = normalise_content(content)
        self._message_edited(actor_id=editor_id, message_id=message.message_id, seq=message.seq, content=content)

    @event(MessageEdited)
    def _message_edited(self, actor_id: str, message_id: UUID, seq: int, content: str) -> None:
        pass  # the content lives in the log and the read models, not in this aggregate

    def delete_message(self, actor_id: str, message: MessageFacts) -> None:
        self._require_own_live_message(actor_id, message)
        self._message_deleted(actor_id=actor_id, message_id=message.message_id, seq=message.seq)

    @event(MessageDeleted)
    def _message_deleted(self, actor_id: str, message_id: UUID, seq: int) -> None:
        pass  # the message index records the deletion in the same transaction

    # ---- receipts and typing --------------------------------------------------------------

    def mark_read(self, reader_id: str, up_to_seq: int | None = None) -> bool:
        """Move the reader's watermark forward; returns False when there was nothing to move."""
        self._require_active(reader_id)
        target = self._clamp_seq(up_to_seq)
        if target <= self.read_up_to.get(reader_id, 0):
            return False  # a read marker never moves backwards
        self._message_read(actor_id=reader_id, up_to_seq=target)
        return True

    @event(MessageRead)
    def _message_read(self, actor_id: str, up_to_seq: int) -> None:
        self.read_up_to[actor_id] = up_to_seq
        # What was read was necessarily delivered.
        self.delivered_up_to[actor_id] = max(self.delivered_up_to.get(actor_id, 0), up_to_seq)

    def mark_delivered(self, recipient_id: str, up_to_seq: int) -> bool:
        self._require_active(recipient_id)
        target = self._clamp_seq(up_to_seq)
        if target <= self.delivered_up_to.get(recipient_id, 0):
            return False
        self._messages_delivered(actor_id=recipient_id, up_to_seq=target)
        return True

    @event(MessagesDelivered)
    def _messages_delivered(self, actor_id: str, up_to_seq: int) -> None:
        self.delivered_up_to[actor_id] = up_to_seq

    def set_typing(self, user_id: str, is_typing: bool) -> bool:
        """Record a typing change; returns False when the state did not change."""
        self._require_active(user_id)
        if self.typing.get(user_id, False) == is_typing:
            return False
        self._typing_changed(actor_id=user_id, is_typing=is_typing)
        return True

    @event(TypingChanged)
    def _typing_changed(self, actor_id: str, is_typing: bool) -> None:
        if is_typing:
            self.typing[actor_id] = True
        else:
            self.typing.pop(actor_id, None)

    # ---- guards ---------------------------------------------------------------------------

    def _require_active(self, user_id: str) -> None:
        if not self.is_active_participant(user_id):
            raise NotParticipantError(f"{user_id} is not a participant of this conversation")

    def _require_own_live_message(self, actor_id: str, message: MessageFacts) -> None:
        self._require_active(actor_id)
        if message.conversation_id != self.id:
            raise MessageNotFoundError("no such message in this conversation")
        if message.sender_id != actor_id:
            raise NotMessageSenderError("only the sender may change a message")
        if message.deleted:
            raise MessageDeletedError("the message was deleted")

    def _clamp_seq(self, up_to_seq: int | None) -> int:
        if up_to_seq is None:
            return self.last_seq
        return max(0, min(int(up_to_seq), self.last_seq))


def check_participant_set(conversation_type: ConversationType, participant_ids: frozenset[str]) -> frozenset[str]:
    for user_id in participant_ids:
        check_user_id(user_id)
    count = len(participant_ids)
    if conversation_type in TWO_PARTY_TYPES and count != 2:
        raise InvalidParticipantsError(f"a {conversation_type.value} conversation has exactly 2 participants")
    if conversation_type is ConversationType.GROUP and not 2 <= count <= MAX_GROUP_PARTICIPANTS:
        raise InvalidParticipantsError(f"a GROUP conversation has 2 to {MAX_GROUP_PARTICIPANTS} participants")
    return participant_ids


def event_actor(domain_event: Any) -> str | None:
    return getattr(domain_event, "actor_id", None)
