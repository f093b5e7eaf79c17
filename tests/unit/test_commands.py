"""A send command names the message it sends, once per command."""

from __future__ import annotations

from uuid import uuid4

from application.commands import SendMessage
from domain.values import message_id_for


def test_a_send_with_a_client_id_names_the_message_its_retries_name() -> None:
    conversation_id = uuid4()
    command = SendMessage("alice", conversation_id, "hello", client_message_id="c-1")
    retry = SendMessage("alice", conversation_id, "hello", client_message_id="c-1")

    assert command.message_id == message_id_for(conversation_id, "alice", "c-1") == retry.message_id


def test_a_send_without_a_client_id_keeps_one_new_id_for_its_whole_life() -> None:
    conversation_id = uuid4()
    command = SendMessage("alice", conversation_id, "hello")
    other = SendMessage("alice", conversation_id, "hello")

    # A batch decided twice (a resend among its sends) must give this send the same id both times.
    assert command.message_id == command.message_id
    assert command.message_id != other.message_id


def test_the_message_id_is_not_part_of_the_commands_value() -> None:
    command = SendMessage("alice", uuid4(), "hello", client_message_id="c-1")
    _ = command.message_id

    assert command == SendMessage("alice", command.conversation_id, "hello", client_message_id="c-1")
