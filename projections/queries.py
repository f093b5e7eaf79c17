"""Read-model queries: what GraphQL and the gateway ask of the projections (asyncpg, Redis).

Every query reads the stable views in the schema `read`, never a generation (`rm_gN`), so a
replay can switch generations under a running server. Pages are keyset pages (no OFFSET): the
cursor is the last row's sort key and the next page is "strictly after it", so a page costs the
same at the start and the end of a long history, and rows arriving meanwhile never shift it.

Access rule, the same in every query: an id that names nothing is `*NotFoundError`; a
conversation (or a message in one) the user is not an active participant of is
`NotParticipantError`. Queries with several statements run in one read-only REPEATABLE READ
transaction, so a message and the receipts that decide its delivery status come from one
snapshot.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Any, TypeVar
from uuid import UUID

import asyncpg
import redis.asyncio

from domain.errors import ConversationNotFoundError, InvalidInputError, MessageNotFoundError, NotParticipantError
from domain.values import MAX_GROUP_PARTICIPANTS
from projections.cursors import (
    MAX_BIGINT,
    decode_conversation_cursor,
    decode_message_cursor,
    decode_search_cursor,
    encode_conversation_cursor,
    encode_message_cursor,
    encode_search_cursor,
)
from projections.views import ConversationView, MessageView, OnlineStatusView, Page, ParticipantView, delivery_status

T = TypeVar("T")

MAX_PAGE_SIZE = 100  # the contract's bound on `first`: bounds one response and one query's work
MAX_SEARCH_QUERY_CHARS = 256  # a search box, not a document: bounds the tsquery Postgres builds
# A client asks for the people on one screen; the largest is the member list of the largest
# group. Still one Redis round trip (a pipeline), whatever the count.
MAX_ONLINE_STATUS_USERS = MAX_GROUP_PARTICIPANTS
# Presence keys, written by the real-time gateway (M3): online while the key exists.
ONLINE_KEY = "user:online:{user_id}"
LAST_SEEN_KEY = "user:last_seen:{user_id}"  # an ISO 8601 timestamp or epoch seconds


class InvalidPageSizeError(InvalidInputError):
    """`first` is outside 1..MAX_PAGE_SIZE."""


class InvalidSearchQueryError(InvalidInputError):
    """The search text is not a string or is too long."""


class InvalidUserListError(InvalidInputError):
    """Too many user ids in one presence query."""


_MESSAGE_FIELDS = (
    "id", "conversation_id", "sender_id", "content", "message_type", "parent_message_id", "seq",
    "client_message_id", "created_at", "edited_at", "deleted_at",
)
_MESSAGE_COLUMNS = ", ".join(f"m.{name}" for name in _MESSAGE_FIELDS)
_LAST_MESSAGE_COLUMNS = ", ".join(f"m.{name} AS last_{name}" for name in _MESSAGE_FIELDS)

# The viewer's participation `p` must be joined by the caller.
_CONVERSATION_SELECT = f"""
SELECT c.id, c.type, c.title, c.item_id, c.last_message_at, c.activity_at, c.created_at, c.updated_at,
       greatest(c.last_seq - p.read_up_to, 0) AS unread_count, p.is_active AS viewer_is_active,
       {_LAST_MESSAGE_COLUMNS}
"""

# Index: participants_by_user (user_id, ...), then each conversation and its last message by key.
# The sort is over one user's conversations only, never over the table.
LIST_CONVERSATIONS = f"""{_CONVERSATION_SELECT}
FROM read.conversation_participants p
JOIN read.conversations c ON c.id = p.conversation_id
LEFT JOIN read.messages m ON m.id = c.last_message_id
WHERE p.user_id = $1 AND p.is_active
  AND ($2::timestamptz IS NULL OR (c.activity_at, c.id) < ($2::timestamptz, $3::uuid))
ORDER BY c.activity_at DESC, c.id DESC
LIMIT $4"""

GET_CONVERSATION = f"""{_CONVERSATION_SELECT}
FROM read.conversations c
LEFT JOIN read.conversation_participants p ON p.conversation_id = c.id AND p.user_id = $2
LEFT JOIN read.messages m ON m.id = c.last_message_id
WHERE c.id = $1"""

# Index: the primary key (conversation_id, user_id). `c` is joined so that a conversation
# with no row at all (unknown id) and one the user is not in can be told apart.
CONVERSATION_MEMBERS = """
SELECT c.id AS conversation_id, p.user_id, p.is_active, p.joined_at, p.read_up_to, p.last_read_at,
       p.delivered_up_to
FROM read.conversations c
LEFT JOIN read.conversation_participants p ON p.conversation_id = c.id
WHERE c.id = ANY($1::uuid[])
ORDER BY c.id, p.is_active DESC, p.user_id"""

# Index: UNIQUE (conversation_id, seq), scanned backwards from the cursor.
LIST_MESSAGES = f"""
SELECT {_MESSAGE_COLUMNS} FROM read.messages m
WHERE m.conversation_id = $1 AND m.seq < $2
ORDER BY m.seq DESC
LIMIT $3"""

GET_MESSAGE = f"SELECT {_MESSAGE_COLUMNS} FROM read.messages m WHERE m.id = $1"

# Index: the GIN index `messages_search` (this exact expression), then the user's active
# conversations by participants_by_user. Deleted messages have no content, so they never match;
# `deleted_at IS NULL` says so explicitly.
MESSAGES_AFTER = f"""
SELECT {_MESSAGE_COLUMNS} FROM read.messages m
WHERE m.conversation_id = $1 AND m.seq > $2 ORDER BY m.seq LIMIT $3"""

MEMBER_CONVERSATIONS = """
SELECT c.id, c.last_seq FROM read.conversation_participants p
JOIN read.conversations c ON c.id = p.conversation_id
WHERE p.user_id = $1 AND p.is_active"""

PRESENCE_CONVERSATIONS = """
SELECT me.conversation_id FROM read.conversation_participants me
WHERE me.user_id = $1 AND me.is_active
  AND (SELECT count(*) FROM read.conversation_participants p
       WHERE p.conversation_id = me.conversation_id AND p.is_active) <= $2"""

_SEARCH_MATCH = "to_tsvector('simple', coalesce(m.content, '')) @@ plainto_tsquery('simple', $2)"
SEARCH_MY_CONVERSATIONS = f"""
SELECT {_MESSAGE_COLUMNS}, m.position FROM read.messages m
WHERE {_SEARCH_MATCH} AND m.deleted_at IS NULL AND m.position < $3
  AND m.conversation_id IN (
      SELECT p.conversation_id FROM read.conversation_participants p WHERE p.user_id = $1 AND p.is_active)
ORDER BY m.position DESC
LIMIT $4"""
# Access was checked first; $1 is the conversation here.
SEARCH_ONE_CONVERSATION = f"""
SELECT {_MESSAGE_COLUMNS}, m.position FROM read.messages m
WHERE {_SEARCH_MATCH} AND m.deleted_at IS NULL AND m.position < $3 AND m.conversation_id = $1
ORDER BY m.position DESC
LIMIT $4"""

UNREAD_COUNT = """
SELECT coalesce(sum(greatest(c.last_seq - p.read_up_to, 0)), 0)::bigint
FROM read.conversation_participants p
JOIN read.conversations c ON c.id = p.conversation_id
WHERE p.user_id = $1 AND p.is_active"""

Members = dict[UUID, tuple[ParticipantView, ...]]


class ReadModel:
    def __init__(self, pool: asyncpg.Pool, redis: redis.asyncio.Redis | None) -> None:
        self._pool = pool
        self._redis = redis

    # ---- conversations ------------------------------------------------------------------------

    async def list_conversations(self, user_id: str, first: int, after: str | None) -> Page[ConversationView]:
        check_page_size(first)
        activity_at, last_id = decode_conversation_cursor(after) if after is not None else (None, None)
        async with self._snapshot() as connection:
            rows = await connection.fetch(LIST_CONVERSATIONS, user_id, activity_at, last_id, first + 1)
            members = await _members(connection, [row["id"] for row in rows[:first]])
        return _page(
            rows,
            first,
            lambda row: encode_conversation_cursor(row["activity_at"], row["id"]),
            lambda row: _conversation(row, members[row["id"]]),
        )

    async def get_conversation(self, user_id: str, conversation_id: UUID) -> ConversationView:
        async with self._snapshot() as connection:
            row = await connection.fetchrow(GET_CONVERSATION, conversation_id, user_id)
            if row is None:
                raise ConversationNotFoundError("no conversation has this id")
            if not row["viewer_is_active"]:
                raise NotParticipantError("you are not a participant of this conversation")
            members = await _members(connection, [conversation_id])
        return _conversation(row, members[conversation_id])

    async def unread_count(self, user_id: str) -> int:
        return int(await self._pool.fetchval(UNREAD_COUNT, user_id))

    # ---- messages -----------------------------------------------------------------------------

    async def list_messages(
        self, user_id: str, conversation_id: UUID, first: int, after: str | None
    ) -> Page[MessageView]:
        """Newest first; the page after the cursor `seq = N` holds only `seq < N`."""
        check_page_size(first)
        before_seq = decode_message_cursor(after) if after is not None else MAX_BIGINT
        async with self._snapshot() as connection:
            members = await _members_of_visible(connection, user_id, conversation_id)
            rows = await connection.fetch(LIST_MESSAGES, conversation_id, before_seq, first + 1)
        return _page(rows, first, lambda row: encode_message_cursor(row["seq"]), lambda row: _message(row, members))

    async def get_message(self, user_id: str, message_id: UUID) -> MessageView:
        async with self._snapshot() as connection:
            row = await connection.fetchrow(GET_MESSAGE, message_id)
            if row is None:
                raise MessageNotFoundError("no message has this id")
            members = await _members_of_visible(connection, user_id, row["conversation_id"])
        return _message(row, members)

    async def search_messages(
        self, user_id: str, query: str, conversation_id: UUID | None, first: int, after: str | None
    ) -> Page[MessageView]:
        """Full-text search over the user's conversations, newest first (by log position)."""
        check_page_size(first)
        if not isinstance(query, str) or len(query) > MAX_SEARCH_QUERY_CHARS:
            raise InvalidSearchQueryError(f"query must be a string of at most {MAX_SEARCH_QUERY_CHARS} characters")
        before_position = decode_search_cursor(after) if after is not None else MAX_BIGINT
        async with self._snapshot() as connection:
            if conversation_id is not None:
                await _members_of_visible(connection, user_id, conversation_id)
                rows = await connection.fetch(
                    SEARCH_ONE_CONVERSATION, conversation_id, query, before_position, first + 1
                )
            else:
                rows = await connection.fetch(SEARCH_MY_CONVERSATIONS, user_id, query, before_position, first + 1)
            members = await _members(connection, list({row["conversation_id"] for row in rows[:first]}))
        return _page(
            rows,
            first,
            lambda row: encode_search_cursor(row["position"]),
            lambda row: _message(row, members.get(row["conversation_id"], ())),
        )

    # ---- for the real-time gateway ------------------------------------------------------------

    async def member_conversations(self, user_id: str) -> dict[UUID, int]:
        """The user's active conversations and each one's last seq (what a new socket follows)."""
        rows = await self._pool.fetch(MEMBER_CONVERSATIONS, user_id)
        return {row["id"]: row["last_seq"] for row in rows}

    async def messages_after(
        self, conversation_id: UUID, after_seq: int, limit: int, *, user_id: str | None = None
    ) -> list[MessageView]:
        """Messages with seq > `after_seq`, oldest first (sync and catch-up). With `user_id`,
        the access rule applies; without, the caller (the node's hub) already checked it."""
        async with self._snapshot() as connection:
            if user_id is not None:
                members = await _members_of_visible(connection, user_id, conversation_id)
            else:
                members = (await _members(connection, [conversation_id])).get(conversation_id, ())
            rows = await connection.fetch(MESSAGES_AFTER, conversation_id, after_seq, limit)
        return [_message(row, members) for row in rows]

    async def presence_conversations(self, user_id: str, max_members: int) -> list[str]:
        """The user's active conversations of at most `max_members` members: where a change of
        the user's presence is announced."""
        rows = await self._pool.fetch(PRESENCE_CONVERSATIONS, user_id, max_members)
        return [str(row["conversation_id"]) for row in rows]

    # ---- presence (Redis) ---------------------------------------------------------------------

    async def online_statuses(self, user_ids: Sequence[str]) -> list[OnlineStatusView]:
        """One status per requested id, in the order asked; everyone is offline without Redis."""
        if len(user_ids) > MAX_ONLINE_STATUS_USERS:
            raise InvalidUserListError(f"ask for at most {MAX_ONLINE_STATUS_USERS} users at once")
        if not user_ids:
            return []
        if self._redis is None:
            return [OnlineStatusView(user, False, None) for user in user_ids]
        async with self._redis.pipeline(transaction=False) as pipe:
            for user in user_ids:
                pipe.exists(ONLINE_KEY.format(user_id=user))
            pipe.mget([LAST_SEEN_KEY.format(user_id=user) for user in user_ids])
            *online, last_seen = await pipe.execute()
        return [
            OnlineStatusView(user, bool(is_online), parse_last_seen(seen))
            for user, is_online, seen in zip(user_ids, online, last_seen)
        ]

    # ---- plumbing -----------------------------------------------------------------------------

    @asynccontextmanager
    async def _snapshot(self) -> AsyncIterator[asyncpg.Connection]:
        async with self._pool.acquire() as connection:
            async with connection.transaction(isolation="repeatable_read", readonly=True):
                yield connection


def check_page_size(first: Any) -> None:
    if isinstance(first, bool) or not isinstance(first, int) or not 1 <= first <= MAX_PAGE_SIZE:
        raise InvalidPageSizeError(f"first must be between 1 and {MAX_PAGE_SIZE}")


def parse_last_seen(raw: bytes | str | None) -> datetime | None:
    """`user:last_seen:*` holds epoch seconds or ISO 8601; anything else reads as unknown."""
    if raw is None:
        return None
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    try:
        return datetime.fromtimestamp(float(text), timezone.utc)
    except (ValueError, OverflowError, OSError):
        pass
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


async def _members(connection: asyncpg.Connection, conversation_ids: list[UUID]) -> Members:
    """Every participant (also those who left) of each conversation, in one query."""
    if not conversation_ids:
        return {}
    members: dict[UUID, list[ParticipantView]] = {}
    for row in await connection.fetch(CONVERSATION_MEMBERS, conversation_ids):
        people = members.setdefault(row["conversation_id"], [])
        if row["user_id"] is not None:  # the LEFT JOIN's row for a conversation without members
            people.append(
                ParticipantView(
                    user_id=row["user_id"],
                    is_active=row["is_active"],
                    joined_at=row["joined_at"],
                    last_read_seq=row["read_up_to"],
                    last_read_at=row["last_read_at"],
                    last_delivered_seq=row["delivered_up_to"],
                )
            )
    return {conversation_id: tuple(people) for conversation_id, people in members.items()}


async def _members_of_visible(
    connection: asyncpg.Connection, user_id: str, conversation_id: UUID
) -> tuple[ParticipantView, ...]:
    """The conversation's participants, after the access rule: unknown → 404, not active → 403."""
    members = (await _members(connection, [conversation_id])).get(conversation_id)
    if members is None:
        raise ConversationNotFoundError("no conversation has this id")
    if not any(p.user_id == user_id and p.is_active for p in members):
        raise NotParticipantError("you are not a participant of this conversation")
    return members


def _message(row: asyncpg.Record, participants: tuple[ParticipantView, ...], prefix: str = "") -> MessageView:
    fields = {name: row[prefix + name] for name in _MESSAGE_FIELDS}
    return MessageView(**fields, delivery_status=delivery_status(fields["sender_id"], fields["seq"], participants))


def _conversation(row: asyncpg.Record, participants: tuple[ParticipantView, ...]) -> ConversationView:
    last = _message(row, participants, prefix="last_") if row["last_id"] is not None else None
    return ConversationView(
        id=row["id"],
        type=row["type"],
        title=row["title"],
        item_id=row["item_id"],
        participants=participants,
        last_message=last,
        last_message_at=row["last_message_at"],
        unread_count=row["unread_count"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _page(
    rows: Sequence[asyncpg.Record],
    first: int,
    cursor_of: Callable[[asyncpg.Record], str],
    view_of: Callable[[asyncpg.Record], T],
) -> Page[T]:
    """Queries fetch `first + 1` rows: the extra one only says whether a next page exists."""
    items = [(cursor_of(row), view_of(row)) for row in rows[:first]]
    return Page(items=items, has_next_page=len(rows) > first, end_cursor=items[-1][0] if items else None)
