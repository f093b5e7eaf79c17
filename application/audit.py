"""Audit queries over the event log: who did what, when, in which conversation, to which message.

The log is the only source: read models may lag or be rebuilt, the log is what happened. An
entry's `position` is its notification id, so every answer can be checked against the table.

Access paths (the events table has one index, the primary key `(originator_id, version)`, and
keeps timestamps and actors inside the serialised state, so no SQL filter exists for them):
- a conversation: its notifications, read by primary key (`ConversationLog` port);
- a message: the message index names its conversation and the version it was sent at, so only
  that conversation's tail is read, and reading ends at the message's deletion;
- anything else (actor, time range): one decoding pass over the log (an audit-index read
  model is the answer once logs grow past what a scan at ~35k events/s serves).
Every query is bounded by the log's high-water mark taken when it starts, so it describes one
moment and ends even while writers keep appending.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from itertools import islice
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Notification

from application.errors import ApplicationError
from application.messaging import MessagingApplication
from domain.conversation import event_actor

# ~0.1 s of rows at the measured 60k rows/s: long enough to amortise the round trip, small
# enough that one page of message-sized rows stays a few MB in memory.
PAGE_SIZE = 5000

# Said by `AuditEntry.type`, `position`, `conversation_id`, `actor` and `at`, or pure bookkeeping.
ENVELOPE_FIELDS = frozenset({"originator_id", "originator_version", "timestamp", "actor_id", "originator_topic"})



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
            entries = self._entries(self._conversation_notifications(query.conversation_id, stop), query)
        else:
            entries = self._entries(self._log_notifications(stop), query)
        return islice(entries, query.limit)

    # ---- access paths ----------------------------------------------------------------------

    def _entries(self, notifications: Iterable[Notification], query: AuditQuery) -> Iterator[AuditEntry]:
        for notification in notifications:
            event = self.app.mapper.to_domain_event(notification)
            if query.matches(event):
                yield audit_entry(notification.id, event)

    def _message_entries(self, query: AuditQuery, stop: int) -> Iterator[AuditEntry]:
        assert query.message_id is not None
        indexed = self.app.lookup_messages([query.message_id]).get(query.message_id)
        if indexed is None:
            return iter(())
        # The history starts at the MessageSent event, whose version the index records.
        notifications = self._conversation_notifications(
            indexed.conversation_id, stop, after_version=indexed.originator_version - 1
        )
        return _through_deletion(self._entries(notifications, query), query.message_id)

    # ---- paging ----------------------------------------------------------------------------

    def _log_notifications(self, stop: int) -> Iterator[Notification]:
        start = 1
        while start <= stop:
            page = self.app.recorder.select_notifications(start, PAGE_SIZE, stop=stop)
            yield from page
            if len(page) < PAGE_SIZE:
                return
            start = page[-1].id + 1

    def _conversation_notifications(self, conversation_id: UUID, stop: int, after_version: int = 0) -> Iterator[Notification]:
        while True:
            page = self.app.conversation_log.select_conversation_notifications(conversation_id, after_version, PAGE_SIZE)
            for notification in page:
                if notification.id > stop:
                    return  # appended after this query started
                yield notification
            if len(page) < PAGE_SIZE:
                return
            after_version = page[-1].originator_version


def _through_deletion(entries: Iterable[AuditEntry], message_id: UUID) -> Iterator[AuditEntry]:
    """A deleted message can be neither edited nor deleted again: its history ends there."""
    for entry in entries:
        yield entry
        if entry.type == "MessageDeleted" and entry.data.get("message_id") == str(message_id):
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
