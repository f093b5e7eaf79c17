"""The versioning story of docs/events.md works with this project's mapper configuration."""

from __future__ import annotations

from uuid import uuid4

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import StoredEvent

from domain.conversation import Conversation
from domain.values import ConversationType


class Listing(Aggregate):
    """A stand-in aggregate whose event went from version 1 to 2 (`text` became `body`)."""

    TOPIC = "test:Listing"

    class Snapshot(Aggregate.Snapshot):
        TOPIC = "test:Listing.Snapshot"

    class Created(Aggregate.Created):
        TOPIC = "test:Listing.Created"

    class Noted(Aggregate.Event):
        TOPIC = "test:Listing.Noted"
        class_version = 2
        body: str
        priority: int

        @staticmethod
        def upcast_v1_v2(state: dict) -> None:
            state["body"] = state.pop("text")
            state["priority"] = 0  # version 1 had no priority: everything was normal

    def __init__(self) -> None:
        self.notes: list[str] = []

    @event(Noted)
    def note(self, body: str, priority: int) -> None:
        self.notes.append(body)


class TestUpcasting:
    def test_a_version_one_event_in_the_log_is_read_in_the_newest_shape(self) -> None:
        app = Application()
        listing = Listing()
        app.save(listing)
        # Write a row exactly as version 1 of the code would have stored it.
        old_state = app.mapper.transcoder.encode(
            {"originator_id": listing.id, "originator_version": 2, "timestamp": listing.created_on, "text": "old"}
        )
        app.recorder.insert_events([StoredEvent(listing.id, 2, "test:Listing.Noted", old_state)])

        loaded = app.repository.get(listing.id)
        noted = list(app.events.get(listing.id))[-1]

        assert loaded.notes == ["old"]
        assert (noted.body, noted.priority) == ("old", 0)


class TestStableTopics:
    def test_stored_rows_name_stable_topics_not_module_paths(self) -> None:
        app = Application()
        conversation = Conversation.start(uuid4(), "alice", ConversationType.DIRECT, frozenset({"bob"}))
        app.save(conversation)
        topics = [n.topic for n in app.recorder.select_notifications(start=1, limit=10)]
        assert topics == ["loopify:Conversation.ConversationStarted"]
