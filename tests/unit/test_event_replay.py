"""Replaying the stored log rebuilds the same `Conversation`; snapshots round-trip; topics are stable.

Uses the library's in-memory (POPO) persistence, so these stay unit tests: no I/O.
"""

from __future__ import annotations

import copy
from typing import Any
from uuid import uuid4

import pytest
from eventsourcing.application import Application
from eventsourcing.utils import resolve_topic

from domain.conversation import Conversation
from domain.values import ConversationType, MessageFacts

ALICE, BOB, CAROL, DAVE = "alice", "bob", "carol", "dave"
IN_MEMORY = {"PERSISTENCE_MODULE": "eventsourcing.popo"}  # never pick up a Postgres env by accident

EVENT_NAMES = [
    "ConversationStarted",
    "ParticipantJoined",
    "ParticipantLeft",
    "MessageSent",
    "MessageEdited",
    "MessageDeleted",
    "MessageRead",
    "MessagesDelivered",
    "TypingChanged",
]


class SnapshottingApp(Application):
    snapshotting_intervals = {Conversation: 2}


def state_of(conversation: Conversation) -> dict[str, Any]:
    return copy.deepcopy({k: v for k, v in vars(conversation).items() if k != "_pending_events"})


def busy_group() -> tuple[Conversation, dict[int, dict[str, Any]]]:
    """A group that has been through every kind of event; returns it and its state at each version."""
    states: dict[int, dict[str, Any]] = {}

    def record() -> None:
        states[conversation.version] = state_of(conversation)

    # Alice starts a group with Bob and Carol.
    conversation = Conversation.start(uuid4(), ALICE, ConversationType.GROUP, frozenset({BOB, CAROL}), title="Trip")
    record()
    # Bob types, then sends; his typing stops with the message.
    conversation.set_typing(BOB, True)
    record()
    bob_message_id = uuid4()
    conversation.send_message(BOB, bob_message_id, "who is driving?")
    record()
    # Alice replies to Bob, then edits and deletes her reply.
    alice_message_id = uuid4()
    bob_message = MessageFacts(bob_message_id, conversation.id, BOB, 1, False)
    conversation.send_message(ALICE, alice_message_id, "me", parent=bob_message, client_message_id="c-1")
    record()
    alice_message = MessageFacts(alice_message_id, conversation.id, ALICE, 2, False)
    conversation.edit_message(ALICE, alice_message, "me, at 9")
    record()
    conversation.delete_message(ALICE, alice_message)
    record()
    # Carol's device receives everything, she reads the first message, and starts typing.
    conversation.mark_delivered(CAROL, 2)
    record()
    conversation.mark_read(CAROL, 1)
    record()
    conversation.set_typing(CAROL, True)
    record()
    # Alice adds Dave and removes Carol.
    conversation.add_participant(ALICE, DAVE)
    record()
    conversation.remove_participant(ALICE, CAROL)
    record()
    return conversation, states


class TestReplay:
    def test_replaying_the_collected_events_rebuilds_identical_state(self) -> None:
        conversation, _ = busy_group()
        expected = state_of(conversation)

        replayed = None
        for domain_event in conversation.collect_events():
            replayed = domain_event.mutate(replayed)

        assert isinstance(replayed, Conversation)
        assert state_of(replayed) == expected

    def test_an_aggregate_loaded_from_the_store_equals_the_one_saved(self) -> None:
        app = Application(env=IN_MEMORY)
        conversation, _ = busy_group()
        expected = state_of(conversation)

        app.save(conversation)
        loaded = app.repository.get(conversation.id)

        assert loaded is not conversation
        assert state_of(loaded) == expected
        assert loaded.version == 11
        assert loaded.participant_ids == [ALICE, BOB, DAVE]
        assert loaded.typing_users() == []
        assert loaded.last_seq == 2
        # Dave joined after both messages: the history starts out read for him.
        assert loaded.read_up_to == {ALICE: 2, BOB: 1, CAROL: 1, DAVE: 2}
        assert loaded.delivered_up_to == {ALICE: 2, BOB: 1, CAROL: 2, DAVE: 2}

    def test_each_past_version_is_rebuilt_as_it_was(self) -> None:
        app = Application(env=IN_MEMORY)
        conversation, states = busy_group()
        app.save(conversation)

        for version, expected in states.items():
            assert state_of(app.repository.get(conversation.id, version=version)) == expected, version

    def test_commands_on_a_loaded_aggregate_continue_the_seq(self) -> None:
        app = Application(env=IN_MEMORY)
        conversation, _ = busy_group()
        app.save(conversation)

        loaded = app.repository.get(conversation.id)
        loaded.send_message(DAVE, uuid4(), "hello, I'm new")
        app.save(loaded)

        assert app.repository.get(conversation.id).last_seq == 3

    def test_the_rules_still_hold_on_a_loaded_aggregate(self) -> None:
        app = Application(env=IN_MEMORY)
        conversation, _ = busy_group()
        app.save(conversation)

        loaded = app.repository.get(conversation.id)

        assert not loaded.is_active_participant(CAROL)
        assert loaded.mark_read(BOB, 99) is True  # clamped to the last seq
        assert loaded.collect_events()[0].up_to_seq == 2
        assert loaded.mark_read(DAVE, 99) is False  # he joined with the history already read


class TestSnapshots:
    def test_snapshots_are_taken_at_the_configured_interval(self) -> None:
        app = SnapshottingApp(env=IN_MEMORY)
        conversation, _ = busy_group()

        app.save(conversation)

        versions = [s.originator_version for s in app.snapshots.get(conversation.id)]
        assert versions == [2, 4, 6, 8, 10]

    def test_each_snapshot_rebuilds_the_state_of_its_version(self) -> None:
        app = SnapshottingApp(env=IN_MEMORY)
        conversation, states = busy_group()
        app.save(conversation)

        for snapshot in app.snapshots.get(conversation.id):
            rebuilt = snapshot.mutate(None)
            assert state_of(rebuilt) == states[snapshot.originator_version], snapshot.originator_version

    def test_loading_from_the_latest_snapshot_and_the_tail_equals_the_saved_aggregate(self) -> None:
        app = SnapshottingApp(env=IN_MEMORY)
        conversation, _ = busy_group()
        expected = state_of(conversation)

        app.save(conversation)

        assert state_of(app.repository.get(conversation.id)) == expected

    def test_snapshots_are_stored_under_a_stable_topic(self) -> None:
        app = SnapshottingApp(env=IN_MEMORY)
        conversation, _ = busy_group()
        app.save(conversation)

        stored = app.snapshots.recorder.select_events(conversation.id)

        assert stored
        assert {s.topic for s in stored} == {"loopify:Conversation.Snapshot"}


class TestStableTopics:
    def test_the_log_names_each_event_by_its_stable_topic(self) -> None:
        app = Application(env=IN_MEMORY)
        conversation, _ = busy_group()
        app.save(conversation)

        topics = [n.topic for n in app.recorder.select_notifications(start=1, limit=100)]

        assert topics == [
            "loopify:Conversation.ConversationStarted",
            "loopify:Conversation.TypingChanged",
            "loopify:Conversation.MessageSent",
            "loopify:Conversation.MessageSent",
            "loopify:Conversation.MessageEdited",
            "loopify:Conversation.MessageDeleted",
            "loopify:Conversation.MessagesDelivered",
            "loopify:Conversation.MessageRead",
            "loopify:Conversation.TypingChanged",
            "loopify:Conversation.ParticipantJoined",
            "loopify:Conversation.ParticipantLeft",
        ]

    def test_every_event_kind_appears_in_the_story(self) -> None:
        app = Application(env=IN_MEMORY)
        conversation, _ = busy_group()
        app.save(conversation)

        topics = {n.topic for n in app.recorder.select_notifications(start=1, limit=100)}

        assert topics == {f"loopify:Conversation.{name}" for name in EVENT_NAMES}

    @pytest.mark.parametrize("name", EVENT_NAMES)
    def test_each_stable_topic_resolves_to_its_event_class(self, name: str) -> None:
        event_class = getattr(Conversation, name)

        assert event_class.TOPIC == f"loopify:Conversation.{name}"
        assert resolve_topic(f"loopify:Conversation.{name}") is event_class

    def test_the_aggregate_topic_is_stable(self) -> None:
        conversation, _ = busy_group()

        started = conversation.collect_events()[0]

        assert started.originator_topic == "loopify:Conversation"
        assert resolve_topic("loopify:Conversation") is Conversation
