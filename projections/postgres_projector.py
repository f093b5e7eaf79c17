"""The Postgres read-model projector: a batch of events in, one transaction of changes out.

Events are first folded into set-wise changes (new rows, final values per key), then written
by one call of the generation's `apply_batch` function (`batch_function`), which takes them as
one JSON document: the cost per event is a few microseconds, and a batch's is one round trip.
Folding is what makes a catch-up of a million events and a live tail both fast. Exactly-once
comes from the tracking row, advanced from the expected position in the same transaction.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson
import psycopg
from psycopg import Cursor, sql
from psycopg.types.json import Jsonb

from domain.conversation import Conversation
from projections.batch_function import GENERATION_SWITCHED, TRACKING_MOVED

Event = Any  # a Conversation event (the classes are nested, so a precise union is unwieldy)


class TrackingConflictError(Exception):
    """The tracking position moved under us: another projector applied these events."""


@dataclass
class ReadModelChanges:
    """What a batch of events changes, folded so each row is written once."""

    conversations: dict[UUID, list[Any]] = field(default_factory=dict)  # new rows
    # upserts: [conversation_id, user_id, is_active, joined_at, left_at, joined_in_this_batch]
    participants: dict[tuple[UUID, str], list[Any]] = field(default_factory=dict)
    messages: dict[UUID, list[Any]] = field(default_factory=dict)  # new rows, in order
    message_updates: dict[UUID, list[Any]] = field(default_factory=dict)  # [content, edited_at, deleted_at]
    tips: dict[UUID, list[Any]] = field(default_factory=dict)  # [last_seq, last_id, last_at]
    touched: dict[UUID, datetime] = field(default_factory=dict)  # latest change: the new updated_at
    # (conversation, user) -> (seq, at, position): the first event to reach the highest seq wins
    read_marks: dict[tuple[UUID, str], tuple[int, datetime, int]] = field(default_factory=dict)
    delivered_marks: dict[tuple[UUID, str], tuple[int, datetime, int]] = field(default_factory=dict)
    # For the Redis projection: whose unread counts and which inbox rows may have changed.
    unread_conversations: set[UUID] = field(default_factory=set)
    unread_users: set[tuple[UUID, str]] = field(default_factory=set)
    last_message_conversations: set[UUID] = field(default_factory=set)
    position: int = 0

    # ---- folding, one handler per event type ------------------------------------------------

    def on_conversation_started(self, e: Conversation.ConversationStarted, position: int) -> None:
        self.conversations[e.originator_id] = [
            e.originator_id, e.conversation_type, e.title, e.item_id, e.actor_id, e.timestamp, e.timestamp, e.timestamp
        ]
        for user in e.participant_ids:
            self.participants[(e.originator_id, user)] = [e.originator_id, user, True, e.timestamp, None, True]
            self.unread_users.add((e.originator_id, user))

    def on_participant_joined(self, e: Conversation.ParticipantJoined, position: int) -> None:
        key = (e.originator_id, e.user_id)
        self.participants[key] = [e.originator_id, e.user_id, True, e.timestamp, None, True]
        # A newcomer sees the history, but it is not news to them: it starts out read.
        self._raise_mark(self.read_marks, key, e.since_seq, e.timestamp, position)
        self._raise_mark(self.delivered_marks, key, e.since_seq, e.timestamp, position)
        self.touched[e.originator_id] = e.timestamp
        self.unread_users.add(key)

    def on_participant_left(self, e: Conversation.ParticipantLeft, position: int) -> None:
        key = (e.originator_id, e.user_id)
        earlier = self.participants.get(key)
        joined, joined_here = (earlier[3], earlier[5]) if earlier else (e.timestamp, False)
        self.participants[key] = [e.originator_id, e.user_id, False, joined, e.timestamp, joined_here]
        self.touched[e.originator_id] = e.timestamp
        self.unread_users.add(key)

    def on_message_sent(self, e: Conversation.MessageSent, position: int) -> None:
        self.messages[e.message_id] = [
            e.message_id, e.originator_id, e.seq, position, e.actor_id, e.content, e.message_type,
            e.parent_message_id, e.client_message_id, e.timestamp, None, None,
        ]
        self.tips[e.originator_id] = [e.seq, e.message_id, e.timestamp]
        self.touched[e.originator_id] = e.timestamp
        # The sender has read (and received) everything up to their own message.
        self._raise_mark(self.read_marks, (e.originator_id, e.actor_id), e.seq, e.timestamp, position)
        self._raise_mark(self.delivered_marks, (e.originator_id, e.actor_id), e.seq, e.timestamp, position)
        self.unread_conversations.add(e.originator_id)
        self.last_message_conversations.add(e.originator_id)

    def on_message_edited(self, e: Conversation.MessageEdited, position: int) -> None:
        self._change_message(e.message_id, content=e.content, edited_at=e.timestamp)
        self.touched[e.originator_id] = e.timestamp
        self.last_message_conversations.add(e.originator_id)

    def on_message_deleted(self, e: Conversation.MessageDeleted, position: int) -> None:
        self._change_message(e.message_id, content=None, deleted_at=e.timestamp)
        self.touched[e.originator_id] = e.timestamp
        self.last_message_conversations.add(e.originator_id)

    def on_message_read(self, e: Conversation.MessageRead, position: int) -> None:
        self._raise_mark(self.read_marks, (e.originator_id, e.actor_id), e.up_to_seq, e.timestamp, position)
        self._raise_mark(self.delivered_marks, (e.originator_id, e.actor_id), e.up_to_seq, e.timestamp, position)
        self.unread_users.add((e.originator_id, e.actor_id))

    def on_messages_delivered(self, e: Conversation.MessagesDelivered, position: int) -> None:
        self._raise_mark(self.delivered_marks, (e.originator_id, e.actor_id), e.up_to_seq, e.timestamp, position)

    def on_typing_changed(self, e: Conversation.TypingChanged, position: int) -> None:
        pass  # ephemeral: lives in Redis for the real-time layer, not in the read model

    def _change_message(self, message_id: UUID, **changes: Any) -> None:
        if message_id in self.messages:  # sent in this same batch: change the new row
            row = self.messages[message_id]
            row[5] = changes.get("content", row[5])
            row[10] = changes.get("edited_at", row[10])
            row[11] = changes.get("deleted_at", row[11])
            return
        update = self.message_updates.setdefault(message_id, [None, None, None])
        update[0] = changes.get("content")
        update[1] = changes.get("edited_at", update[1])
        update[2] = changes.get("deleted_at", update[2])

    @staticmethod
    def _raise_mark(marks: dict[Any, tuple[int, datetime, int]], key: Any, seq: int, at: datetime, position: int) -> None:
        """Keep the highest seq; on a tie, the earlier event (it reached that seq first)."""
        current = marks.get(key)
        if current is None or seq > current[0] or (seq == current[0] and position < current[2]):
            marks[key] = (seq, at, position)


HANDLERS = {
    Conversation.ConversationStarted: ReadModelChanges.on_conversation_started,
    Conversation.ParticipantJoined: ReadModelChanges.on_participant_joined,
    Conversation.ParticipantLeft: ReadModelChanges.on_participant_left,
    Conversation.MessageSent: ReadModelChanges.on_message_sent,
    Conversation.MessageEdited: ReadModelChanges.on_message_edited,
    Conversation.MessageDeleted: ReadModelChanges.on_message_deleted,
    Conversation.MessageRead: ReadModelChanges.on_message_read,
    Conversation.MessagesDelivered: ReadModelChanges.on_messages_delivered,
    Conversation.TypingChanged: ReadModelChanges.on_typing_changed,
}


def fold(events: Iterable[tuple[int, Event]], into: ReadModelChanges | None = None) -> ReadModelChanges:
    """Fold events into changes (`into`: keep folding a long run, as a rebuild does)."""
    changes = into if into is not None else ReadModelChanges()
    for position, event in events:
        handler = HANDLERS.get(type(event))
        if handler is not None:  # an event type this model ignores still advances the position
            handler(changes, event, position)
        changes.position = position
    return changes


# ---- writing ----------------------------------------------------------------------------------

CONVERSATION_COLUMNS = ("id", "type", "title", "item_id", "started_by", "activity_at", "created_at", "updated_at")
MESSAGE_COLUMNS = (
    "id", "conversation_id", "seq", "position", "sender_id", "content", "message_type",
    "parent_message_id", "client_message_id", "created_at", "edited_at", "deleted_at",
)
PARTICIPANT_COLUMNS = ("conversation_id", "user_id", "is_active", "joined_at", "left_at")


def batch_document(changes: ReadModelChanges) -> dict[str, Any]:
    """The changes as `apply_batch` takes them (see `batch_function`): lists of rows by name."""
    document: dict[str, Any] = {"position": changes.position}
    if changes.conversations:
        document["conversations"] = [dict(zip(CONVERSATION_COLUMNS, row)) for row in changes.conversations.values()]
    joined = [dict(zip(PARTICIPANT_COLUMNS, row)) for row in changes.participants.values() if row[5]]
    if joined:
        document["joined"] = joined
    left = [{"cid": row[0], "uid": row[1], "left_at": row[4]} for row in changes.participants.values() if not row[5]]
    if left:
        document["left"] = left
    if changes.messages:
        document["messages"] = [dict(zip(MESSAGE_COLUMNS, row)) for row in changes.messages.values()]
    if changes.message_updates:
        document["updates"] = _updates(changes)
    if changes.touched:
        tips = changes.tips
        document["touched"] = [
            dict(zip(("cid", "seq", "mid", "at"), (cid, *(tips.get(cid) or (None, None, None)))), touched_at=at)
            for cid, at in changes.touched.items()
        ]
    if changes.read_marks or changes.delivered_marks:
        document["receipts"] = [
            dict(
                zip(
                    ("cid", "uid", "read_seq", "read_at", "delivered_seq", "delivered_at"),
                    (cid, user, *_mark(changes.read_marks.get((cid, user))),
                     *_mark(changes.delivered_marks.get((cid, user)))),
                )
            )
            for cid, user in changes.read_marks.keys() | changes.delivered_marks.keys()
        ]
    return document


def apply_statement(
    schema: str, generation: int, changes: ReadModelChanges, expected_position: int, *, live: bool = False,
    notify: str | None = None, unread: tuple[list[str], list[Any]] | None = None,
) -> tuple[bytes, tuple[Any, ...]]:
    """The call of `apply_batch` for a batch: it advances tracking from `expected_position`
    (else raises `TRACKING_MOVED`) and writes the changes; `live` checks the generation is the
    live one (else `GENERATION_SWITCHED`), `notify` names the channel told the new position on
    commit, and `unread` (users, conversations: `RedisCounters.unread_keys`) asks for their
    memberships back."""
    document = batch_document(changes)
    if notify is not None:
        document["notify"] = notify
    users, conversations = unread or ([], [])
    if users:
        document["unread_users"] = users
    if conversations:
        document["unread_conversations"] = conversations
    return (
        _statement("SELECT * FROM {s}.apply_batch(%s, %s::jsonb, %s, %s)", schema),
        (expected_position, Jsonb(document, dumps=orjson.dumps), generation, live),
    )


def apply(cursor: Cursor[Any], schema: str, changes: ReadModelChanges, expected_position: int) -> None:
    """Write the folded changes and advance tracking, inside the caller's transaction."""
    try:
        cursor.execute(*apply_statement(schema, 0, changes, expected_position))
    except psycopg.Error as error:
        raise_conflicts(error)
        raise
    cursor.fetchall()


def raise_conflicts(error: psycopg.Error) -> None:
    """A failed `apply_batch` whose cause is another projector or a switch, as such."""
    if error.sqlstate in (TRACKING_MOVED, GENERATION_SWITCHED):
        raise TrackingConflictError(error.diag.message_primary or str(error)) from error


def apply_message_updates(cursor: Cursor[Any], schema: str, changes: ReadModelChanges) -> None:
    """Edits and deletions of messages written before this batch, alone (`apply` writes them
    with the rest; a rebuild writes them while `messages` has only its primary key)."""
    if changes.message_updates:
        cursor.execute(
            _statement("SELECT {s}.apply_message_updates(%s::jsonb)", schema), (Jsonb(_updates(changes), dumps=orjson.dumps),)
        )


def copy_messages(cursor: Cursor[Any], schema: str, changes: ReadModelChanges) -> None:
    """Write the folded new messages now and forget them (a rebuild streams them)."""
    if changes.messages:
        with cursor.copy(_copy_statement(schema, "messages", MESSAGE_COLUMNS)) as copy:
            for row in changes.messages.values():
                copy.write_row(row)
        changes.messages.clear()


def _updates(changes: ReadModelChanges) -> list[dict[str, Any]]:
    return [
        {"id": message_id, "content": content, "edited_at": edited, "deleted_at": deleted}
        for message_id, (content, edited, deleted) in changes.message_updates.items()
    ]


@functools.lru_cache(maxsize=256)
def _statement(template: str, schema: str, **identifiers: str) -> bytes:
    """A statement on a generation schema, composed once: psycopg's composition and quoting
    were a sixth of the projector's time when done for every batch."""
    parts = {name: sql.Identifier(value) for name, value in identifiers.items()}
    return sql.SQL(template).format(s=sql.Identifier(schema), **parts).as_bytes(None)


@functools.lru_cache(maxsize=64)
def _copy_statement(schema: str, table: str, columns: tuple[str, ...]) -> bytes:
    return (
        sql.SQL("COPY {s}.{t} ({c}) FROM STDIN")
        .format(s=sql.Identifier(schema), t=sql.Identifier(table), c=sql.SQL(", ").join(map(sql.Identifier, columns)))
        .as_bytes(None)
    )


def _mark(mark: tuple[int, datetime, int] | None) -> tuple[int | None, datetime | None]:
    return (mark[0], mark[1]) if mark is not None else (None, None)
