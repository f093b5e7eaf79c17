"""Every rule the `Conversation` aggregate enforces, one behaviour per test. No I/O.

A refused command must leave no trace: `assert_refused` checks the error, that no event is
pending and that the aggregate's state is exactly what it was before the command.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any
from uuid import uuid4

import pytest

from domain.conversation import MAX_TITLE_CHARS, Conversation
from domain.errors import (
    AccessDeniedError,
    InvalidContentError,
    InvalidInputError,
    InvalidParticipantsError,
    MessageDeletedError,
    NotMessageSenderError,
    NotParticipantError,
    MessageNotFoundError,
    UnknownParentMessageError,
    UnsupportedOperationError,
)
from domain.values import (
    MAX_CONTENT_CHARS,
    MAX_GROUP_PARTICIPANTS,
    MAX_USER_ID_CHARS,
    ConversationType,
    MessageFacts,
    MessageType,
)

ALICE, BOB, CAROL, DAVE, MALLORY = "alice", "bob", "carol", "dave", "mallory"

INVALID_CONTENT = [
    pytest.param("", id="empty"),
    pytest.param("   \n\t  ", id="only-whitespace"),
    pytest.param("x" * (MAX_CONTENT_CHARS + 1), id="too-long"),
    pytest.param("bell\x07inside", id="control-BEL"),
    pytest.param("nul\x00inside", id="control-NUL"),
    pytest.param("carriage\rreturn", id="control-CR"),
    pytest.param("escape\x1b[31m", id="control-ESC"),
    pytest.param("del\x7finside", id="control-DEL"),
]

INVALID_USER_IDS = [
    pytest.param("", id="empty"),
    pytest.param("   ", id="blank"),
    pytest.param("u" * (MAX_USER_ID_CHARS + 1), id="too-long"),
]


# ---- helpers ---------------------------------------------------------------------------------


def start(
    conversation_type: ConversationType,
    actor_id: str = ALICE,
    others: frozenset[str] | set[str] = frozenset({BOB}),
    title: str | None = None,
    item_id: str | None = None,
) -> Conversation:
    """Start a conversation and drain its creation event, so tests see only what they cause."""
    conversation = Conversation.start(
        uuid4(), actor_id, conversation_type, frozenset(others), title=title, item_id=item_id
    )
    conversation.collect_events()
    return conversation


def start_direct() -> Conversation:
    return start(ConversationType.DIRECT)


def start_group(others: frozenset[str] | set[str] = frozenset({BOB, CAROL})) -> Conversation:
    return start(ConversationType.GROUP, others=others, title="Weekend trip")


def start_item() -> Conversation:
    return start(ConversationType.ITEM, item_id="item-42")


def send(conversation: Conversation, sender_id: str, content: str = "hello") -> MessageFacts:
    """Send a message, drain its event and return the facts the write side would look up."""
    message_id = uuid4()
    conversation.send_message(sender_id, message_id, content)
    conversation.collect_events()
    return MessageFacts(message_id, conversation.id, sender_id, conversation.last_seq, False)


def deleted(message: MessageFacts) -> MessageFacts:
    return MessageFacts(message.message_id, message.conversation_id, message.sender_id, message.seq, True)


def state_of(conversation: Conversation) -> dict[str, Any]:
    return copy.deepcopy({k: v for k, v in vars(conversation).items() if k != "_pending_events"})


def only_event(conversation: Conversation) -> Any:
    events = conversation.collect_events()
    assert len(events) == 1, events
    return events[0]


def assert_refused(conversation: Conversation, error: type[Exception], command: Callable[[], Any]) -> None:
    assert conversation.pending_events == []  # precondition: the helpers drained earlier events
    before = state_of(conversation)
    with pytest.raises(error):
        command()
    assert conversation.collect_events() == []
    assert state_of(conversation) == before


def assert_no_op(conversation: Conversation, command: Callable[[], bool]) -> None:
    assert conversation.pending_events == []
    before = state_of(conversation)
    assert command() is False
    assert conversation.collect_events() == []
    assert state_of(conversation) == before


# ---- starting a conversation -----------------------------------------------------------------


class TestStartDirectConversation:
    def test_starter_and_one_other_user_make_a_direct_conversation(self) -> None:
        conversation_id = uuid4()
        conversation = Conversation.start(conversation_id, ALICE, ConversationType.DIRECT, frozenset({BOB}))

        started = only_event(conversation)
        assert type(started).__name__ == "ConversationStarted"
        assert started.originator_id == conversation_id
        assert started.actor_id == ALICE
        assert started.conversation_type == "DIRECT"
        assert started.participant_ids == [ALICE, BOB]
        assert conversation.type is ConversationType.DIRECT
        assert conversation.participant_ids == [ALICE, BOB]
        assert conversation.started_by == ALICE
        assert conversation.last_seq == 0

    def test_listing_the_starter_among_the_participants_is_allowed(self) -> None:
        conversation = start(ConversationType.DIRECT, others={ALICE, BOB})

        assert conversation.participant_ids == [ALICE, BOB]

    def test_three_users_are_refused(self) -> None:
        with pytest.raises(InvalidParticipantsError):
            Conversation.start(uuid4(), ALICE, ConversationType.DIRECT, frozenset({BOB, CAROL}))

    @pytest.mark.parametrize("others", [frozenset(), frozenset({ALICE})], ids=["nobody", "only-self"])
    def test_the_starter_alone_is_refused(self, others: frozenset[str]) -> None:
        with pytest.raises(InvalidParticipantsError):
            Conversation.start(uuid4(), ALICE, ConversationType.DIRECT, others)

    def test_an_item_id_is_not_kept_on_a_direct_conversation(self) -> None:
        conversation = start(ConversationType.DIRECT, item_id="item-42")

        assert conversation.item_id is None


class TestStartGroupConversation:
    def test_starter_and_others_make_a_group_with_its_title(self) -> None:
        conversation = Conversation.start(
            uuid4(), ALICE, ConversationType.GROUP, frozenset({BOB, CAROL}), title="Weekend trip"
        )

        started = only_event(conversation)
        assert started.conversation_type == "GROUP"
        assert started.participant_ids == [ALICE, BOB, CAROL]
        assert started.title == "Weekend trip"
        assert conversation.title == "Weekend trip"
        assert conversation.participant_ids == [ALICE, BOB, CAROL]

    def test_the_starter_is_a_participant_even_when_not_listed(self) -> None:
        conversation = start(ConversationType.GROUP, others={BOB, CAROL}, title="t")

        assert ALICE in conversation.participant_ids
        assert conversation.is_active_participant(ALICE)

    def test_a_group_of_two_is_allowed(self) -> None:
        conversation = start(ConversationType.GROUP, others={BOB}, title="t")

        assert conversation.participant_ids == [ALICE, BOB]

    @pytest.mark.parametrize("others", [frozenset(), frozenset({ALICE})], ids=["nobody", "only-self"])
    def test_a_group_of_one_is_refused(self, others: frozenset[str]) -> None:
        with pytest.raises(InvalidParticipantsError):
            Conversation.start(uuid4(), ALICE, ConversationType.GROUP, others, title="t")

    def test_a_group_of_exactly_the_maximum_including_the_starter_is_allowed(self) -> None:
        others = {f"user-{n}" for n in range(MAX_GROUP_PARTICIPANTS - 1)}

        conversation = start(ConversationType.GROUP, others=others, title="t")

        assert len(conversation.participant_ids) == MAX_GROUP_PARTICIPANTS

    def test_a_group_over_the_maximum_is_refused(self) -> None:
        others = frozenset(f"user-{n}" for n in range(MAX_GROUP_PARTICIPANTS))  # + the starter

        with pytest.raises(InvalidParticipantsError):
            Conversation.start(uuid4(), ALICE, ConversationType.GROUP, others, title="t")

    def test_the_title_is_stored_trimmed(self) -> None:
        conversation = start(ConversationType.GROUP, others={BOB}, title="  Weekend trip \n")

        assert conversation.title == "Weekend trip"

    def test_a_blank_title_is_stored_as_none(self) -> None:
        conversation = start(ConversationType.GROUP, others={BOB}, title="   ")

        assert conversation.title is None

    def test_a_title_of_the_maximum_length_after_trimming_is_allowed(self) -> None:
        title = "t" * MAX_TITLE_CHARS

        conversation = start(ConversationType.GROUP, others={BOB}, title=f"  {title}  ")

        assert conversation.title == title

    def test_a_title_over_the_maximum_length_is_refused(self) -> None:
        with pytest.raises(InvalidParticipantsError):
            Conversation.start(
                uuid4(), ALICE, ConversationType.GROUP, frozenset({BOB}), title="t" * (MAX_TITLE_CHARS + 1)
            )


class TestStartItemConversation:
    def test_buyer_and_seller_talk_about_one_item(self) -> None:
        conversation = Conversation.start(
            uuid4(), ALICE, ConversationType.ITEM, frozenset({BOB}), item_id="item-42"
        )

        started = only_event(conversation)
        assert started.conversation_type == "ITEM"
        assert started.item_id == "item-42"
        assert conversation.item_id == "item-42"
        assert conversation.participant_ids == [ALICE, BOB]

    @pytest.mark.parametrize("item_id", [None, "", "   "], ids=["none", "empty", "blank"])
    def test_a_missing_item_id_is_refused(self, item_id: str | None) -> None:
        with pytest.raises(InvalidParticipantsError):
            Conversation.start(uuid4(), ALICE, ConversationType.ITEM, frozenset({BOB}), item_id=item_id)

    def test_a_third_user_is_refused(self) -> None:
        with pytest.raises(InvalidParticipantsError):
            Conversation.start(uuid4(), ALICE, ConversationType.ITEM, frozenset({BOB, CAROL}), item_id="i")

    def test_the_starter_alone_is_refused(self) -> None:
        with pytest.raises(InvalidParticipantsError):
            Conversation.start(uuid4(), ALICE, ConversationType.ITEM, frozenset({ALICE}), item_id="i")


class TestUserIds:
    @pytest.mark.parametrize("user_id", INVALID_USER_IDS)
    def test_an_invalid_participant_id_is_refused(self, user_id: str) -> None:
        with pytest.raises(InvalidParticipantsError):
            Conversation.start(uuid4(), ALICE, ConversationType.GROUP, frozenset({BOB, user_id}), title="t")

    @pytest.mark.parametrize("user_id", INVALID_USER_IDS)
    def test_an_invalid_starter_id_is_refused(self, user_id: str) -> None:
        with pytest.raises(InvalidParticipantsError):
            Conversation.start(uuid4(), user_id, ConversationType.GROUP, frozenset({BOB, CAROL}), title="t")

    def test_a_user_id_of_the_maximum_length_is_allowed(self) -> None:
        long_id = "u" * MAX_USER_ID_CHARS

        conversation = start(ConversationType.DIRECT, others={long_id})

        assert long_id in conversation.participant_ids


# ---- messages --------------------------------------------------------------------------------


class TestSendMessage:
    def test_an_active_participant_sends_a_message_with_the_next_seq(self) -> None:
        conversation = start_direct()
        message_id = uuid4()

        conversation.send_message(BOB, message_id, "hello", client_message_id="c-1")

        sent = only_event(conversation)
        assert type(sent).__name__ == "MessageSent"
        assert sent.actor_id == BOB
        assert sent.message_id == message_id
        assert sent.seq == 1
        assert sent.content == "hello"
        assert sent.message_type == "TEXT"
        assert sent.parent_message_id is None
        assert sent.client_message_id == "c-1"
        assert conversation.last_seq == 1

    def test_seq_is_gapless_and_strictly_increasing(self) -> None:
        conversation = start_group()
        seqs = []

        for n, sender in enumerate([ALICE, BOB, CAROL, BOB, ALICE]):
            conversation.send_message(sender, uuid4(), f"message {n}")
            seqs.append(only_event(conversation).seq)

        assert seqs == [1, 2, 3, 4, 5]
        assert conversation.last_seq == 5

    def test_edits_deletes_receipts_and_typing_do_not_use_up_a_seq(self) -> None:
        conversation = start_group()
        first = send(conversation, ALICE)
        second = send(conversation, BOB)
        conversation.edit_message(ALICE, first, "edited")
        conversation.delete_message(BOB, second)
        conversation.mark_read(CAROL)
        conversation.mark_delivered(CAROL, 2)
        conversation.set_typing(CAROL, True)
        conversation.collect_events()

        conversation.send_message(CAROL, uuid4(), "third")

        assert only_event(conversation).seq == 3

    def test_the_content_is_stored_trimmed(self) -> None:
        conversation = start_direct()

        conversation.send_message(ALICE, uuid4(), "  \n hello there \t ")

        assert only_event(conversation).content == "hello there"

    def test_newlines_and_tabs_inside_the_content_are_kept(self) -> None:
        conversation = start_direct()

        conversation.send_message(ALICE, uuid4(), "line one\nline two\tcolumn")

        assert only_event(conversation).content == "line one\nline two\tcolumn"

    def test_content_of_the_maximum_length_after_trimming_is_accepted(self) -> None:
        conversation = start_direct()
        content = "x" * MAX_CONTENT_CHARS

        conversation.send_message(ALICE, uuid4(), f"   {content}   ")

        assert only_event(conversation).content == content

    def test_a_single_character_is_accepted(self) -> None:
        conversation = start_direct()

        conversation.send_message(ALICE, uuid4(), "k")

        assert only_event(conversation).content == "k"

    @pytest.mark.parametrize("content", INVALID_CONTENT)
    def test_invalid_content_is_refused(self, content: str) -> None:
        conversation = start_direct()

        assert_refused(conversation, InvalidContentError, lambda: conversation.send_message(ALICE, uuid4(), content))

    @pytest.mark.parametrize("message_type", list(MessageType), ids=lambda t: t.value)
    def test_the_message_type_is_recorded(self, message_type: MessageType) -> None:
        conversation = start_direct()

        conversation.send_message(ALICE, uuid4(), "payload", message_type=message_type)

        assert only_event(conversation).message_type == message_type.value

    def test_a_user_outside_the_conversation_cannot_send(self) -> None:
        conversation = start_direct()

        assert_refused(conversation, NotParticipantError, lambda: conversation.send_message(MALLORY, uuid4(), "hi"))

    def test_a_reply_to_a_message_of_the_same_conversation_names_its_parent(self) -> None:
        conversation = start_direct()
        parent = send(conversation, ALICE)

        conversation.send_message(BOB, uuid4(), "reply", parent=parent)

        assert only_event(conversation).parent_message_id == parent.message_id

    def test_a_reply_to_a_message_of_another_conversation_is_refused(self) -> None:
        conversation = start_direct()
        elsewhere = start_direct()
        foreign_parent = send(elsewhere, ALICE)

        assert_refused(
            conversation,
            UnknownParentMessageError,
            lambda: conversation.send_message(ALICE, uuid4(), "reply", parent=foreign_parent),
        )

    def test_sending_marks_everything_up_to_the_message_read_and_delivered_for_the_sender(self) -> None:
        conversation = start_direct()
        send(conversation, ALICE)
        send(conversation, ALICE)

        send(conversation, BOB)

        assert conversation.read_up_to[BOB] == 3
        assert conversation.delivered_up_to[BOB] == 3
        assert conversation.read_up_to[ALICE] == 2

    def test_sending_stops_the_sender_typing_indicator(self) -> None:
        conversation = start_direct()
        conversation.set_typing(ALICE, True)
        conversation.set_typing(BOB, True)
        conversation.collect_events()

        send(conversation, ALICE)

        assert conversation.typing_users() == [BOB]


class TestEditMessage:
    def test_the_sender_edits_their_message(self) -> None:
        conversation = start_direct()
        message = send(conversation, ALICE)

        conversation.edit_message(ALICE, message, "  corrected  ")

        edited = only_event(conversation)
        assert type(edited).__name__ == "MessageEdited"
        assert edited.actor_id == ALICE
        assert edited.message_id == message.message_id
        assert edited.seq == message.seq
        assert edited.content == "corrected"
        assert conversation.last_seq == 1

    def test_another_participant_cannot_edit_the_message(self) -> None:
        conversation = start_direct()
        message = send(conversation, ALICE)

        assert_refused(conversation, NotMessageSenderError, lambda: conversation.edit_message(BOB, message, "mine now"))

    def test_a_user_outside_the_conversation_cannot_edit(self) -> None:
        conversation = start_direct()
        message = send(conversation, ALICE)
        impostor_facts = MessageFacts(message.message_id, conversation.id, MALLORY, message.seq, False)

        assert_refused(
            conversation, NotParticipantError, lambda: conversation.edit_message(MALLORY, impostor_facts, "x")
        )

    def test_a_deleted_message_cannot_be_edited(self) -> None:
        conversation = start_direct()
        message = send(conversation, ALICE)

        assert_refused(
            conversation, MessageDeletedError, lambda: conversation.edit_message(ALICE, deleted(message), "again")
        )

    def test_a_message_of_another_conversation_cannot_be_edited(self) -> None:
        conversation = start_direct()
        foreign = send(start_direct(), ALICE)

        assert_refused(conversation, MessageNotFoundError, lambda: conversation.edit_message(ALICE, foreign, "x"))

    @pytest.mark.parametrize("content", INVALID_CONTENT)
    def test_invalid_new_content_is_refused(self, content: str) -> None:
        conversation = start_direct()
        message = send(conversation, ALICE)

        assert_refused(conversation, InvalidContentError, lambda: conversation.edit_message(ALICE, message, content))

    def test_a_sender_who_left_cannot_edit_their_old_message(self) -> None:
        conversation = start_group()
        message = send(conversation, BOB)
        conversation.remove_participant(BOB, BOB)
        conversation.collect_events()

        assert_refused(conversation, NotParticipantError, lambda: conversation.edit_message(BOB, message, "late edit"))


class TestDeleteMessage:
    def test_the_sender_deletes_their_message(self) -> None:
        conversation = start_direct()
        message = send(conversation, ALICE)

        conversation.delete_message(ALICE, message)

        removed = only_event(conversation)
        assert type(removed).__name__ == "MessageDeleted"
        assert removed.actor_id == ALICE
        assert removed.message_id == message.message_id
        assert removed.seq == message.seq
        assert conversation.last_seq == 1

    def test_another_participant_cannot_delete_the_message(self) -> None:
        conversation = start_direct()
        message = send(conversation, ALICE)

        assert_refused(conversation, NotMessageSenderError, lambda: conversation.delete_message(BOB, message))

    def test_a_deleted_message_cannot_be_deleted_again(self) -> None:
        conversation = start_direct()
        message = send(conversation, ALICE)

        assert_refused(conversation, MessageDeletedError, lambda: conversation.delete_message(ALICE, deleted(message)))

    def test_a_message_of_another_conversation_cannot_be_deleted(self) -> None:
        conversation = start_direct()
        foreign = send(start_direct(), ALICE)

        assert_refused(conversation, MessageNotFoundError, lambda: conversation.delete_message(ALICE, foreign))

    def test_a_sender_who_left_cannot_delete_their_old_message(self) -> None:
        conversation = start_group()
        message = send(conversation, BOB)
        conversation.remove_participant(ALICE, BOB)
        conversation.collect_events()

        assert_refused(conversation, NotParticipantError, lambda: conversation.delete_message(BOB, message))


# ---- receipts --------------------------------------------------------------------------------


class TestMarkRead:
    def test_the_read_marker_moves_forward_with_a_message_read_event(self) -> None:
        conversation = start_direct()
        for _ in range(3):
            send(conversation, ALICE)

        assert conversation.mark_read(BOB, 2) is True

        read = only_event(conversation)
        assert type(read).__name__ == "MessageRead"
        assert read.actor_id == BOB
        assert read.up_to_seq == 2
        assert conversation.read_up_to[BOB] == 2

    def test_without_a_seq_everything_up_to_the_last_message_is_read(self) -> None:
        conversation = start_direct()
        for _ in range(3):
            send(conversation, ALICE)

        assert conversation.mark_read(BOB) is True

        assert only_event(conversation).up_to_seq == 3
        assert conversation.read_up_to[BOB] == 3

    def test_the_read_marker_never_moves_backwards(self) -> None:
        conversation = start_direct()
        for _ in range(3):
            send(conversation, ALICE)
        conversation.mark_read(BOB, 3)
        conversation.collect_events()

        assert_no_op(conversation, lambda: conversation.mark_read(BOB, 1))
        assert conversation.read_up_to[BOB] == 3

    def test_marking_the_same_seq_again_changes_nothing(self) -> None:
        conversation = start_direct()
        send(conversation, ALICE)
        conversation.mark_read(BOB, 1)
        conversation.collect_events()

        assert_no_op(conversation, lambda: conversation.mark_read(BOB, 1))

    def test_a_seq_beyond_the_last_message_is_clamped_to_it(self) -> None:
        conversation = start_direct()
        for _ in range(3):
            send(conversation, ALICE)

        assert conversation.mark_read(BOB, 99) is True

        assert only_event(conversation).up_to_seq == 3
        assert conversation.read_up_to[BOB] == 3

    def test_a_seq_beyond_the_last_message_does_not_move_a_marker_already_at_the_end(self) -> None:
        conversation = start_direct()
        send(conversation, ALICE)
        conversation.mark_read(BOB)
        conversation.collect_events()

        assert_no_op(conversation, lambda: conversation.mark_read(BOB, 1000))

    def test_a_negative_seq_changes_nothing(self) -> None:
        conversation = start_direct()
        send(conversation, ALICE)

        assert_no_op(conversation, lambda: conversation.mark_read(BOB, -5))

    def test_reading_an_empty_conversation_changes_nothing(self) -> None:
        conversation = start_direct()

        assert_no_op(conversation, lambda: conversation.mark_read(BOB))

    def test_what_was_read_is_also_delivered(self) -> None:
        conversation = start_direct()
        for _ in range(2):
            send(conversation, ALICE)

        conversation.mark_read(BOB)

        assert conversation.delivered_up_to[BOB] == 2

    def test_reading_never_moves_the_delivered_marker_backwards(self) -> None:
        conversation = start_direct()
        for _ in range(3):
            send(conversation, ALICE)
        conversation.mark_delivered(BOB, 3)
        conversation.collect_events()

        conversation.mark_read(BOB, 1)

        assert conversation.delivered_up_to[BOB] == 3

    def test_a_user_outside_the_conversation_cannot_mark_read(self) -> None:
        conversation = start_direct()
        send(conversation, ALICE)

        assert_refused(conversation, NotParticipantError, lambda: conversation.mark_read(MALLORY))


class TestMarkDelivered:
    def test_the_delivered_marker_moves_forward_with_a_messages_delivered_event(self) -> None:
        conversation = start_direct()
        for _ in range(3):
            send(conversation, ALICE)

        assert conversation.mark_delivered(BOB, 2) is True

        delivered = only_event(conversation)
        assert type(delivered).__name__ == "MessagesDelivered"
        assert delivered.actor_id == BOB
        assert delivered.up_to_seq == 2
        assert conversation.delivered_up_to[BOB] == 2

    def test_delivery_does_not_count_as_reading(self) -> None:
        conversation = start_direct()
        send(conversation, ALICE)

        conversation.mark_delivered(BOB, 1)

        assert conversation.read_up_to[BOB] == 0

    def test_the_delivered_marker_never_moves_backwards(self) -> None:
        conversation = start_direct()
        for _ in range(3):
            send(conversation, ALICE)
        conversation.mark_delivered(BOB, 3)
        conversation.collect_events()

        assert_no_op(conversation, lambda: conversation.mark_delivered(BOB, 2))
        assert conversation.delivered_up_to[BOB] == 3

    def test_a_seq_beyond_the_last_message_is_clamped_to_it(self) -> None:
        conversation = start_direct()
        for _ in range(2):
            send(conversation, ALICE)

        assert conversation.mark_delivered(BOB, 50) is True

        assert only_event(conversation).up_to_seq == 2

    def test_delivery_after_reading_the_same_messages_changes_nothing(self) -> None:
        conversation = start_direct()
        for _ in range(2):
            send(conversation, ALICE)
        conversation.mark_read(BOB)
        conversation.collect_events()

        assert_no_op(conversation, lambda: conversation.mark_delivered(BOB, 2))

    def test_a_negative_seq_changes_nothing(self) -> None:
        conversation = start_direct()
        send(conversation, ALICE)

        assert_no_op(conversation, lambda: conversation.mark_delivered(BOB, -1))

    def test_a_user_outside_the_conversation_cannot_mark_delivered(self) -> None:
        conversation = start_direct()
        send(conversation, ALICE)

        assert_refused(conversation, NotParticipantError, lambda: conversation.mark_delivered(MALLORY, 1))


# ---- typing ----------------------------------------------------------------------------------


class TestTyping:
    def test_starting_to_type_emits_typing_changed(self) -> None:
        conversation = start_direct()

        assert conversation.set_typing(BOB, True) is True

        changed = only_event(conversation)
        assert type(changed).__name__ == "TypingChanged"
        assert changed.actor_id == BOB
        assert changed.is_typing is True
        assert conversation.typing_users() == [BOB]

    def test_typing_again_while_already_typing_emits_nothing(self) -> None:
        conversation = start_direct()
        conversation.set_typing(BOB, True)
        conversation.collect_events()

        assert_no_op(conversation, lambda: conversation.set_typing(BOB, True))

    def test_stopping_when_not_typing_emits_nothing(self) -> None:
        conversation = start_direct()

        assert_no_op(conversation, lambda: conversation.set_typing(BOB, False))

    def test_stopping_after_typing_emits_typing_changed(self) -> None:
        conversation = start_direct()
        conversation.set_typing(BOB, True)
        conversation.collect_events()

        assert conversation.set_typing(BOB, False) is True

        assert only_event(conversation).is_typing is False
        assert conversation.typing_users() == []

    def test_a_user_outside_the_conversation_cannot_type(self) -> None:
        conversation = start_direct()

        assert_refused(conversation, NotParticipantError, lambda: conversation.set_typing(MALLORY, True))


# ---- membership ------------------------------------------------------------------------------


class TestAddParticipant:
    def test_a_group_member_adds_a_new_user(self) -> None:
        conversation = start_group()

        conversation.add_participant(BOB, DAVE)

        joined = only_event(conversation)
        assert type(joined).__name__ == "ParticipantJoined"
        assert joined.actor_id == BOB
        assert joined.user_id == DAVE
        assert conversation.participant_ids == [ALICE, BOB, CAROL, DAVE]

    def test_the_new_member_can_send(self) -> None:
        conversation = start_group()
        conversation.add_participant(ALICE, DAVE)
        conversation.collect_events()

        conversation.send_message(DAVE, uuid4(), "hi all")

        assert only_event(conversation).actor_id == DAVE

    @pytest.mark.parametrize("make", [start_direct, start_item], ids=["DIRECT", "ITEM"])
    def test_only_group_conversations_take_new_participants(self, make: Callable[[], Conversation]) -> None:
        conversation = make()

        assert_refused(conversation, UnsupportedOperationError, lambda: conversation.add_participant(ALICE, CAROL))

    def test_an_existing_participant_cannot_be_added_again(self) -> None:
        conversation = start_group()

        assert_refused(conversation, InvalidParticipantsError, lambda: conversation.add_participant(ALICE, BOB))

    def test_a_user_outside_the_group_cannot_add_anyone(self) -> None:
        conversation = start_group()

        assert_refused(conversation, NotParticipantError, lambda: conversation.add_participant(MALLORY, DAVE))

    @pytest.mark.parametrize("user_id", INVALID_USER_IDS)
    def test_an_invalid_user_id_cannot_be_added(self, user_id: str) -> None:
        conversation = start_group()

        assert_refused(conversation, InvalidParticipantsError, lambda: conversation.add_participant(ALICE, user_id))

    def test_a_full_group_refuses_another_member(self) -> None:
        conversation = start_group(others={f"user-{n}" for n in range(MAX_GROUP_PARTICIPANTS - 1)})
        assert len(conversation.participant_ids) == MAX_GROUP_PARTICIPANTS

        assert_refused(conversation, InvalidParticipantsError, lambda: conversation.add_participant(ALICE, DAVE))

    def test_a_group_one_below_the_maximum_takes_one_more_member(self) -> None:
        conversation = start_group(others={f"user-{n}" for n in range(MAX_GROUP_PARTICIPANTS - 2)})

        conversation.add_participant(ALICE, DAVE)

        assert len(conversation.participant_ids) == MAX_GROUP_PARTICIPANTS

    def test_a_removed_user_can_be_added_back_and_send_again(self) -> None:
        conversation = start_group()
        send(conversation, ALICE)
        conversation.mark_read(BOB)
        conversation.remove_participant(BOB, BOB)
        conversation.add_participant(ALICE, BOB)
        conversation.collect_events()

        conversation.send_message(BOB, uuid4(), "back again")

        assert only_event(conversation).seq == 2
        assert BOB in conversation.participant_ids

    def test_a_returning_member_keeps_their_read_marker(self) -> None:
        conversation = start_group()
        send(conversation, ALICE)
        send(conversation, ALICE)
        conversation.mark_read(BOB)
        conversation.remove_participant(BOB, BOB)

        conversation.add_participant(ALICE, BOB)

        assert conversation.read_up_to[BOB] == 2


class TestRemoveParticipant:
    def test_a_member_leaves_the_group(self) -> None:
        conversation = start_group()

        conversation.remove_participant(BOB, BOB)

        left = only_event(conversation)
        assert type(left).__name__ == "ParticipantLeft"
        assert left.actor_id == BOB
        assert left.user_id == BOB
        assert conversation.participant_ids == [ALICE, CAROL]
        assert not conversation.is_active_participant(BOB)

    def test_the_starter_removes_another_member(self) -> None:
        conversation = start_group()

        conversation.remove_participant(ALICE, CAROL)

        left = only_event(conversation)
        assert left.actor_id == ALICE
        assert left.user_id == CAROL
        assert conversation.participant_ids == [ALICE, BOB]

    def test_a_member_who_is_not_the_starter_cannot_remove_another(self) -> None:
        conversation = start_group()

        assert_refused(conversation, NotParticipantError, lambda: conversation.remove_participant(BOB, CAROL))

    def test_a_member_cannot_remove_the_starter(self) -> None:
        conversation = start_group()

        assert_refused(conversation, AccessDeniedError, lambda: conversation.remove_participant(BOB, ALICE))

    def test_a_user_outside_the_group_cannot_remove_anyone(self) -> None:
        conversation = start_group()

        assert_refused(conversation, NotParticipantError, lambda: conversation.remove_participant(MALLORY, BOB))

    def test_removing_a_user_who_is_not_a_member_is_refused(self) -> None:
        conversation = start_group()

        assert_refused(conversation, InvalidParticipantsError, lambda: conversation.remove_participant(ALICE, DAVE))

    def test_removing_a_member_twice_is_refused(self) -> None:
        conversation = start_group()
        conversation.remove_participant(ALICE, CAROL)
        conversation.collect_events()

        assert_refused(conversation, InvalidParticipantsError, lambda: conversation.remove_participant(ALICE, CAROL))

    @pytest.mark.parametrize("make", [start_direct, start_item], ids=["DIRECT", "ITEM"])
    def test_only_group_conversations_can_be_left(self, make: Callable[[], Conversation]) -> None:
        conversation = make()

        assert_refused(conversation, UnsupportedOperationError, lambda: conversation.remove_participant(BOB, BOB))

    def test_a_starter_who_left_can_no_longer_remove_others(self) -> None:
        conversation = start_group()
        conversation.remove_participant(ALICE, ALICE)
        conversation.collect_events()

        assert_refused(conversation, NotParticipantError, lambda: conversation.remove_participant(ALICE, BOB))

    def test_leaving_clears_the_typing_indicator(self) -> None:
        conversation = start_group()
        conversation.set_typing(BOB, True)
        conversation.collect_events()

        conversation.remove_participant(BOB, BOB)

        assert conversation.typing_users() == []

    @pytest.mark.parametrize(
        ("command", "error"),
        [
            pytest.param(lambda c: c.send_message(BOB, uuid4(), "still here?"), NotParticipantError, id="send"),
            pytest.param(lambda c: c.mark_read(BOB), NotParticipantError, id="read"),
            pytest.param(lambda c: c.mark_delivered(BOB, 1), NotParticipantError, id="deliver"),
            pytest.param(lambda c: c.set_typing(BOB, True), NotParticipantError, id="type"),
            pytest.param(lambda c: c.add_participant(BOB, DAVE), NotParticipantError, id="add"),
            pytest.param(lambda c: c.remove_participant(BOB, BOB), NotParticipantError, id="leave-again"),
        ],
    )
    def test_a_removed_user_can_no_longer_take_part(
        self, command: Callable[[Conversation], Any], error: type[Exception]
    ) -> None:
        conversation = start_group()
        send(conversation, ALICE)
        conversation.remove_participant(ALICE, BOB)
        conversation.collect_events()

        assert_refused(conversation, error, lambda: command(conversation))


# ---- cross-cutting ---------------------------------------------------------------------------


class TestEveryEventNamesItsActor:
    def test_a_full_story_emits_each_event_kind_with_the_user_who_caused_it(self) -> None:
        # Alice starts a group with Bob and Carol.
        conversation = Conversation.start(uuid4(), ALICE, ConversationType.GROUP, frozenset({BOB, CAROL}), title="t")
        # Bob types, then sends; Alice edits and deletes her own message.
        conversation.set_typing(BOB, True)
        conversation.send_message(BOB, uuid4(), "hi")
        alice_message_id = uuid4()
        conversation.send_message(ALICE, alice_message_id, "typo")
        alice_message = MessageFacts(alice_message_id, conversation.id, ALICE, 2, False)
        conversation.edit_message(ALICE, alice_message, "fixed")
        conversation.delete_message(ALICE, alice_message)
        # Carol receives and reads; Alice adds Dave; Carol leaves.
        conversation.mark_delivered(CAROL, 1)
        conversation.mark_read(CAROL)
        conversation.add_participant(ALICE, DAVE)
        conversation.remove_participant(CAROL, CAROL)

        events = conversation.collect_events()

        assert [(type(e).__name__, e.actor_id) for e in events] == [
            ("ConversationStarted", ALICE),
            ("TypingChanged", BOB),
            ("MessageSent", BOB),
            ("MessageSent", ALICE),
            ("MessageEdited", ALICE),
            ("MessageDeleted", ALICE),
            ("MessagesDelivered", CAROL),
            ("MessageRead", CAROL),
            ("ParticipantJoined", ALICE),
            ("ParticipantLeft", CAROL),
        ]
        assert [e.originator_version for e in events] == list(range(1, len(events) + 1))

    @pytest.mark.parametrize(
        "name",
        [
            "ConversationStarted",
            "ParticipantJoined",
            "ParticipantLeft",
            "MessageSent",
            "MessageEdited",
            "MessageDeleted",
            "MessageRead",
            "MessagesDelivered",
            "TypingChanged",
        ],
    )
    def test_every_event_class_declares_an_actor_id(self, name: str) -> None:
        event_class = getattr(Conversation, name)

        assert issubclass(event_class, Conversation.Event)
        assert "actor_id" in {field.name for field in dataclasses.fields(event_class)}

    def test_the_creation_event_is_conversation_started(self) -> None:
        assert Conversation.Created is Conversation.ConversationStarted


class TestRefusedCommandsLeaveNoTrace:
    """Every guard runs before the event: a refusal late in the checks still changes nothing."""

    def test_a_refused_send_after_earlier_activity_keeps_seq_markers_and_typing(self) -> None:
        conversation = start_group()
        send(conversation, ALICE)
        conversation.mark_read(BOB)
        conversation.set_typing(CAROL, True)
        conversation.collect_events()

        # The parent check is the last guard; by then sender and content have passed.
        foreign_parent = send(start_direct(), ALICE)
        assert_refused(
            conversation,
            UnknownParentMessageError,
            lambda: conversation.send_message(CAROL, uuid4(), "valid text", parent=foreign_parent),
        )
        assert conversation.last_seq == 1
        assert conversation.typing_users() == [CAROL]

    def test_domain_errors_for_bad_input_share_one_base_class(self) -> None:
        conversation = start_direct()

        assert_refused(conversation, InvalidInputError, lambda: conversation.send_message(ALICE, uuid4(), ""))


class TestJoiningLate:
    def test_a_member_who_joins_later_starts_with_the_history_read(self) -> None:
        conversation = Conversation.start(uuid4(), "alice", ConversationType.GROUP, frozenset({"bob"}), title="club")
        conversation.send_message("alice", uuid4(), "first")
        conversation.send_message("bob", uuid4(), "second")
        conversation.add_participant("alice", "dave")

        joined = conversation.collect_events()[-1]
        assert joined.since_seq == 2
        assert conversation.read_up_to["dave"] == conversation.delivered_up_to["dave"] == 2
