"""The `eventsourcing` Application that owns the Conversation event store.

It is deliberately thin: loading, record-building and snapshots. Deciding and saving happen in
the group-commit writer (`group_commit.py`) through the handlers (`handlers.py`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any, ClassVar, NamedTuple
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import Recording

from application.ports import ConversationLog, IndexedMessage, MessageIndex
from application.results import ConversationRecord, MessageRecord
from domain.conversation import Conversation
from domain.errors import ConversationNotFoundError, MessageNotFoundError

# A snapshot every 100 events bounds a cold load to one snapshot plus < 100 events, whatever
# the conversation's length (a full replay of 1,000 events measured 87 ms here, a snapshot
# plus tail 1.2 ms).
SNAPSHOT_INTERVAL = 100


class MessagingApplication(Application[UUID]):
    name = "Messaging"  # tables messaging_events, messaging_snapshots, messaging_message_index
    env: ClassVar[dict[str, str]] = {
        "IS_SNAPSHOTTING_ENABLED": "y",
        # Fail fast instead of queueing for 30 s x 10 retries when the pool is exhausted.
        "POSTGRES_CONNECT_TIMEOUT": "5",
        # A save waits at most this long for the events table lock before it is retried.
        "POSTGRES_LOCK_TIMEOUT": "5",
        "POSTGRES_POOL_SIZE": "5",
        "POSTGRES_MAX_OVERFLOW": "10",
        "APPLICATION_RECORDER_TOPIC": "infrastructure.event_store:MessagingRecorder",
        "TRANSCODER_TOPIC": "infrastructure.transcoder:FastJSONTranscoder",
    }

    def __init__(self, env: dict[str, str] | None = None) -> None:
        super().__init__(env=env)
        if not isinstance(self.recorder, MessageIndex) or not isinstance(self.recorder, ConversationLog):
            raise TypeError("the Messaging event store must provide a message index and conversation log")
        self.message_index: MessageIndex = self.recorder
        self.conversation_log: ConversationLog = self.recorder

    def get_conversation(self, conversation_id: UUID) -> Conversation:
        try:
            return self.repository.get(conversation_id)
        except AggregateNotFoundError:
            raise ConversationNotFoundError(f"no conversation {conversation_id}") from None

    def find_conversation(self, conversation_id: UUID) -> Conversation | None:
        try:
            return self.repository.get(conversation_id)
        except AggregateNotFoundError:
            return None

    def lookup_messages(self, message_ids: Iterable[UUID]) -> dict[UUID, IndexedMessage]:
        return self.message_index.lookup_messages(message_ids)

    def current_versions(self, conversation_ids: Iterable[UUID]) -> dict[UUID, int]:
        return self.message_index.current_versions(conversation_ids)

    def get_message(self, message_id: UUID) -> MessageRecord:
        """The message as it was sent (audit and idempotent repeats read this)."""
        indexed = self.lookup_messages([message_id]).get(message_id)
        if indexed is None:
            raise MessageNotFoundError(f"no message {message_id}")
        return self.read_sent_message(indexed)

    def read_sent_message(self, indexed: IndexedMessage) -> MessageRecord:
        version = indexed.originator_version
        events = list(self.events.get(indexed.conversation_id, gt=version - 1, lte=version))
        if not events or not isinstance(events[0], Conversation.MessageSent):
            raise MessageNotFoundError(f"message {indexed.message_id} is not in the log")
        return message_record(events[0])

    def append(self, events: Sequence[DomainEventProtocol[UUID]], **kwargs: Any) -> list[Recording[UUID]]:
        """A decided batch's events into the event store, in one transaction. `Application.save`
        given events (not aggregates) does the same plus a check of each event against a runtime
        Protocol (5% of the group-commit writer's CPU) and two notification hooks this
        application leaves empty; the writer takes its own snapshots."""
        return self.events.put(list(events), **kwargs)

    async def append_async(self, events: Sequence[DomainEventProtocol[UUID]], **kwargs: Any) -> list[int]:
        """`append` for a writer on an event loop: the same events in the same one transaction,
        awaited (the event store's `insert_events_async`). Returns each event's log position,
        in the events' order: the writer needs nothing else of a recording."""
        stored_events = [self.mapper.to_stored_event(event) for event in events]
        positions: list[int] = await self.recorder.insert_events_async(stored_events, **kwargs)  # type: ignore[attr-defined]
        return positions

    def snapshot_of(self, conversation: Conversation) -> Conversation.Snapshot:
        """In-memory state as a snapshot (it is exactly the state at `conversation.version`)."""
        return Conversation.Snapshot.take(conversation)

    def put_snapshots(self, snapshots: Sequence[Conversation.Snapshot]) -> None:
        assert self.snapshots is not None
        self.snapshots.put(list(snapshots))

    def max_position(self) -> int:
        return self.recorder.max_notification_id() or 0

    # ---- the log, as projections read it (projections.ports.EventLog) -----------------------

    def read_log(
        self, after: int, limit: int, *, stop: int | None = None, exclude_topic: str | None = None
    ) -> list[tuple[int, Any]]:
        rows = self.recorder.select_log(after, limit, stop=stop, exclude_topic=exclude_topic)  # type: ignore[attr-defined]
        decode = self.mapper.to_domain_event
        return [(row[0], decode(_LogRow(row[1], row[2], row[3], row[4]))) for row in rows]

    def log_head(self) -> int:
        return self.max_position()

    def bulk_message_source(self) -> BulkMessageSource | None:
        plain_json = self.mapper.cipher is None and self.mapper.compressor is None
        current_shape = getattr(Conversation.MessageSent, "class_version", 1) == 1
        if not (plain_json and current_shape):
            return None
        return BulkMessageSource(
            schema=self.recorder.datastore.schema,  # type: ignore[attr-defined]
            events_table=self.recorder.events_table_name,  # type: ignore[attr-defined]
            message_sent_topic=Conversation.MessageSent.TOPIC,
        )

    @property
    def log_channel(self) -> str:
        return self.recorder.channel_name  # type: ignore[attr-defined,no-any-return]


class BulkMessageSource(NamedTuple):
    """Where MessageSent rows live, for a rebuild that reads them with SQL."""

    schema: str
    events_table: str
    message_sent_topic: str


class _LogRow(NamedTuple):
    """The fields the mapper reads from a stored event (a cheap stand-in for `StoredEvent`)."""

    originator_id: UUID
    originator_version: int
    topic: str
    state: bytes


def message_record(event: Conversation.MessageSent, **changes: Any) -> MessageRecord:
    record = MessageRecord(
        id=event.message_id,
        conversation_id=event.originator_id,
        sender_id=event.actor_id,
        content=event.content,
        message_type=event.message_type,
        parent_message_id=event.parent_message_id,
        seq=event.seq,
        client_message_id=event.client_message_id,
        created_at=event.timestamp,
    )
    return replace(record, **changes) if changes else record


def conversation_record(conversation: Conversation) -> ConversationRecord:
    return ConversationRecord(
        id=conversation.id,
        type=conversation.conversation_type,
        title=conversation.title,
        item_id=conversation.item_id,
        participant_ids=tuple(conversation.participant_ids),
        started_by=conversation.started_by,
        last_seq=conversation.last_seq,
        created_at=conversation.created_on,
        updated_at=conversation.modified_on,
        read_up_to=dict(conversation.read_up_to),
        delivered_up_to=dict(conversation.delivered_up_to),
        inactive_ids=tuple(sorted(user for user, active in conversation.active.items() if not active)),
    )
