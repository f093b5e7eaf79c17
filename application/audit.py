"""Audit queries over the event log: who did what, when, in which conversation, to which message.

The log is the only source: read models may lag or be rebuilt, the log is what happened. An
entry's `position` is its notification id, so every answer can be checked against the table.

Access paths (the events table has one index, the primary key `(originator_id, version)`, and
keeps timestamps and actors inside the serialised state, so no SQL filter exists for them):
- a conversation: its events come from the event store by primary key, already filtered; the
  notification log is then walked only to attach positions, without decoding, and only as far
  as the last matching event;
- a message: the message index names its conversation and the version it was sent at, so only
  that conversation's tail is read, the walk is narrowed to message topics, and it ends at the
  message's deletion (nothing can follow it);
- anything else (actor, time range): one decoding pass over the log.
Every query is bounded by the log's high-water mark taken when it starts, so it describes one
moment and ends even while writers keep appending.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from itertools import islice
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Notification
from eventsourcing.utils import get_topic

from application.errors import ApplicationError
from application.messaging import MessagingApplication
from domain.conversation import Conversation, event_actor

# ~0.1 s of rows at the measured 60k rows/s: long enough to amortise the round trip, small
# enough that one page of message-sized rows stays a few MB in memory.
PAGE_SIZE = 5000

# Said by `AuditEntry.type`, `position`, `conversation_id`, `actor` and `at`, or pure bookkeeping.
ENVELOPE_FIELDS = frozenset({"originator_id", "originator_version", "timestamp", "actor_id", "originator_topic"})

MESSAGE_EVENTS = (Conversation.MessageSent, Conversation.MessageEdited, Conversation.MessageDeleted)
MESSAGE_TOPICS = tuple(get_topic(cls) for cls in MESSAGE_EVENTS)


class InvalidAuditQueryError(ApplicationError):
    """The audit query contradicts itself (an empty time range, a limit below one...)."""


@dataclass(frozen=True)
class AuditEntry:
    position: int  # notification id: the event's place in the whole log
    conversation_id: UUID
    type: str  # the event class name, e.g. "MessageSent"
    actor: str | None
    at: datetime  # UTC
    data: dict[str, Any]  # the event's own fields, JSON-ready (UUIDs and datetimes as strings)


@dataclass(frozen=True)
class AuditQuery:
    """Filters that combine with AND; `None` means "any"."""

    conversation_id: UUID | None = None
    actor: str | None = None
    message_id: UUID | None = None
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive, so consecutive windows never count an event twice
    limit: int | None = None

    def __post_init__(self) -> None:
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and value.utcoffset() is None:
                raise InvalidAuditQueryError(f"{name} must carry a timezone")
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise InvalidAuditQueryError("since must be earlier than until")
        if self.limit is not None and self.limit < 1:
            raise InvalidAuditQueryError("limit must be at least 1")

    def matches(self, event: Any) -> bool:
        if self.conversation_id is not None and event.originator_id != self.conversation_id:
            return False
        if self.message_id is not None and getattr(event, "message_id", None) != self.message_id:
            return False
        if self.actor is not None and event_actor(event) != self.actor:
            return False
        if self.since is not None and event.timestamp < self.since:
            return False
        return self.until is None or event.timestamp < self.until


class AuditLog:
    def __init__(self, app: MessagingApplication) -> None:
        self.app = app

    def list_entries(self, query: AuditQuery) -> list[AuditEntry]:
        return list(self.iter_entries(query))

    def iter_entries(self, query: AuditQuery) -> Iterator[AuditEntry]:
        """Matching entries in log order, read lazily page by page."""
        stop = self.app.max_position()
        if query.message_id is not None:
            entries = self._message_entries(query, stop)
        elif query.conversation_id is not None:
            entries = self._conversation_entries(query.conversation_id, query, stop)
        else:
            entries = self._log_entries(query, stop)
        return islice(entries, query.limit)

    # ---- access paths ----------------------------------------------------------------------

    def _log_entries(self, query: AuditQuery, stop: int) -> Iterator[AuditEntry]:
        for notification in self._notifications(stop):
            event = self.app.mapper.to_domain_event(notification)
            if query.matches(event):
                yield audit_entry(notification.id, event)

    def _message_entries(self, query: AuditQuery, stop: int) -> Iterator[AuditEntry]:
        assert query.message_id is not None
        indexed = self.app.lookup_messages([query.message_id]).get(query.message_id)
        if indexed is None:
            return iter(())
        events = _through_deletion(
            self._conversation_events(indexed.conversation_id, after_version=indexed.originator_version - 1),
            query.message_id,
        )
        return self._conversation_entries(indexed.conversation_id, query, stop, events, topics=MESSAGE_TOPICS)

    def _conversation_entries(
        self,
        conversation_id: UUID,
        query: AuditQuery,
        stop: int,
        events: Iterable[Any] | None = None,
        topics: Sequence[str] = (),
    ) -> Iterator[AuditEntry]:
        if query.conversation_id not in (None, conversation_id):
            return  # a message of another conversation than the one asked for
        if events is None:
            events = self._conversation_events(conversation_id)
        positions = _Positions(
            n for n in self._notifications(stop, topics) if n.originator_id == conversation_id
        )
        for event in events:
            if not query.matches(event):
                continue
            position = positions.position_of(event.originator_version)
            if position is None:
                return  # appended after this query started
            yield audit_entry(position, event)

    # ---- paging ----------------------------------------------------------------------------

    def _notifications(self, stop: int, topics: Sequence[str] = ()) -> Iterator[Notification]:
        start = 1
        while start <= stop:
            page = self.app.recorder.select_notifications(start, PAGE_SIZE, stop=stop, topics=topics)
            yield from page
            if len(page) < PAGE_SIZE:
                return
            start = page[-1].id + 1

    def _conversation_events(self, conversation_id: UUID, after_version: int = 0) -> Iterator[Any]:
        while True:
            page = list(self.app.events.get(conversation_id, gt=after_version, limit=PAGE_SIZE))
            yield from page
            if len(page) < PAGE_SIZE:
                return
            after_version = page[-1].originator_version


class _Positions:
    """Hands out the positions of one conversation's events, walking its notifications once."""

    def __init__(self, notifications: Iterator[Notification]) -> None:
        self._notifications = notifications

    def position_of(self, version: int) -> int | None:
        """Callers ask in ascending version order, as the log stores them."""
        for notification in self._notifications:
            if notification.originator_version == version:
                return notification.id
            if notification.originator_version > version:
                raise ApplicationError(f"version {version} is in the event store but not in the notification log")
        return None


def _through_deletion(events: Iterable[Any], message_id: UUID) -> Iterator[Any]:
    """A deleted message can be neither edited nor deleted again: its history ends there."""
    for event in events:
        yield event
        if isinstance(event, Conversation.MessageDeleted) and event.message_id == message_id:
            return


def audit_entry(position: int, event: Any) -> AuditEntry:
    return AuditEntry(
        position=position,
        conversation_id=event.originator_id,
        type=type(event).__name__,
        actor=event_actor(event),
        at=event.timestamp.astimezone(timezone.utc),
        data={f.name: json_ready(getattr(event, f.name)) for f in fields(event) if f.name not in ENVELOPE_FIELDS},
    )


def json_ready(value: Any) -> Any:
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, datetime):
        return iso_utc(value)
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    if isinstance(value, dict):
        return {str(key): json_ready(item) for key, item in value.items()}
    return value


def iso_utc(moment: datetime) -> str:
    """The project's one timestamp shape (as the GraphQL DateTime scalar): `...T01:05:06.123456Z`."""
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
