"""A unit of work: a batch of commands decided together and saved in one transaction.

Handlers read conversations and message facts through it and leave their events on the
aggregates; after each command the unit of work collects that command's events, so it can
later tell each caller the log position of its own last event. Message-index changes are kept
in an overlay, so a later command in the same batch sees an earlier one's message (an edit of a
message sent a millisecond before, a retry of the same clientMessageId).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol

from application.messaging import MessagingApplication
from application.ports import IndexedMessage, MessageIndexChanges
from application.results import MessageRecord
from domain.conversation import Conversation

DEFAULT_CACHE_SIZE = 10_000  # conversations kept decided-upon in memory; each is O(participants)


class AggregateCache:
    """Least-recently-used conversations, owned by the single writer thread.

    Safe across processes: a cached aggregate that another node has since changed produces a
    version conflict on save, and the writer then evicts and reloads it.
    """

    def __init__(self, max_size: int = DEFAULT_CACHE_SIZE) -> None:
        self.max_size = max_size
        self._items: OrderedDict[UUID, Conversation] = OrderedDict()

    def get(self, conversation_id: UUID) -> Conversation | None:
        conversation = self._items.get(conversation_id)
        if conversation is not None:
            self._items.move_to_end(conversation_id)
        return conversation

    def put(self, conversation: Conversation) -> None:
        self._items[conversation.id] = conversation
        self._items.move_to_end(conversation.id)
        while len(self._items) > self.max_size:
            self._items.popitem(last=False)

    def evict(self, conversation_ids: Iterable[UUID]) -> None:
        for conversation_id in conversation_ids:
            self._items.pop(conversation_id, None)

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class Outcome:
    """A decided command: its return value and the events that fix its log position."""

    value: Any
    events: list[DomainEventProtocol[UUID]] = field(default_factory=list)
    # For an idempotent repeat of an already committed message: a position at or after it.
    fixed_position: int | None = None


class PollutedAggregateError(Exception):
    """A handler raised after triggering events: the aggregate's state can't be trusted."""


class NeedsStoreError(Exception):
    """An offline unit of work was asked for something only the store can answer."""


class UnitOfWork:
    def __init__(
        self,
        app: MessagingApplication,
        cache: AggregateCache,
        known_messages: dict[UUID, IndexedMessage] | None = None,
        looked_up: set[UUID] | None = None,
        *,
        offline: bool = False,
    ) -> None:
        """`offline`: decide only on what is in memory (the writer on the event loop must not
        block on the store); every read the store would answer raises `NeedsStoreError`."""
        self.app = app
        self.offline = offline
        self.cache = cache
        self.touched: dict[UUID, Conversation] = {}
        self.versions_before: dict[UUID, int] = {}
        self.index_changes = MessageIndexChanges()
        self.events: list[DomainEventProtocol[UUID]] = []
        self._messages: dict[UUID, IndexedMessage] = dict(known_messages or {})
        # Ids already asked of the index, found or not: a new clientMessageId is not asked twice.
        self._looked_up: set[UUID] = set(self._messages) | set(looked_up or ())
        self._sent_in_batch: dict[UUID, tuple[MessageRecord, DomainEventProtocol[UUID]]] = {}
        self._current: set[UUID] = set()

    # ---- reading ---------------------------------------------------------------------------

    def conversation(self, conversation_id: UUID) -> Conversation:
        conversation = self.touched.get(conversation_id) or self.cache.get(conversation_id)
        if conversation is None:
            self._needs_store()
            conversation = self.app.get_conversation(conversation_id)
        return self._touch(conversation)

    def find_conversation(self, conversation_id: UUID) -> Conversation | None:
        conversation = self.touched.get(conversation_id) or self.cache.get(conversation_id)
        if conversation is None:
            self._needs_store()
            conversation = self.app.find_conversation(conversation_id)
        return self._touch(conversation) if conversation is not None else None

    def message(self, message_id: UUID) -> IndexedMessage | None:
        if message_id not in self._looked_up:
            self._needs_store()
            self._messages.update(self.app.lookup_messages([message_id]))
            self._looked_up.add(message_id)
        return self._messages.get(message_id)

    def sent_message(self, indexed: IndexedMessage) -> tuple[MessageRecord, list[DomainEventProtocol[UUID]]]:
        """The message as sent, and the event that fixes its position if sent in this batch."""
        if indexed.message_id in self._sent_in_batch:
            record, sent_event = self._sent_in_batch[indexed.message_id]
            return record, [sent_event]
        self._needs_store()
        return self.app.read_sent_message(indexed), []

    # ---- writing ---------------------------------------------------------------------------

    def add_conversation(self, conversation: Conversation) -> None:
        self._touch(conversation)

    def add_message(self, indexed: IndexedMessage, record: MessageRecord, event: DomainEventProtocol[UUID]) -> None:
        self._messages[indexed.message_id] = indexed
        self._looked_up.add(indexed.message_id)
        self._sent_in_batch[indexed.message_id] = (record, event)
        self.index_changes.added.append(indexed)

    def mark_message_deleted(self, indexed: IndexedMessage) -> None:
        self._messages[indexed.message_id] = replace(indexed, deleted=True)
        self.index_changes.deleted.append(indexed.message_id)

    # ---- per-command bookkeeping -------------------------------------------------------------

    def begin_command(self) -> None:
        self._current = set()

    def end_command(self) -> list[DomainEventProtocol[UUID]]:
        """Collect the events the command just triggered."""
        events: list[DomainEventProtocol[UUID]] = []
        for conversation_id in self._current:
            events.extend(self.touched[conversation_id].collect_events())
        events.sort(key=lambda e: (str(e.originator_id), e.originator_version))
        self.events.extend(events)
        return events

    def abandon_command(self) -> None:
        """After a refused command: its aggregates must have no half-made changes."""
        for conversation_id in self._current:
            if self.touched[conversation_id].collect_events():
                raise PollutedAggregateError(f"conversation {conversation_id} changed by a refused command")

    def _needs_store(self) -> None:
        if self.offline:
            raise NeedsStoreError("deciding this command needs the store")

    def _touch(self, conversation: Conversation) -> Conversation:
        if conversation.id not in self.touched:
            self.touched[conversation.id] = conversation
            # A new aggregate has version 1 with its creation event still pending.
            self.versions_before[conversation.id] = conversation.version - len(conversation.pending_events)
        self._current.add(conversation.id)
        return conversation
