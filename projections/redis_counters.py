"""The Redis projection: unread counts per user and per conversation, and the inbox's
last-message cache.

Redis cannot share the Postgres transaction, so these values are *derived* from the Postgres
read model right after each of its commits and written as absolute values (SET, not INCR):
applying the same batch twice, or recomputing after a crash, gives the same keys. Its own
position (`POSITION_KEY`) says how far Redis reflects the log; a runner that finds it behind
the Postgres model recomputes what the gap touched, and a missing key (Redis lost its data)
means a full rebuild from Postgres.

Keys (seed names kept):
  user:unread_count:{userId}              total unread messages of the user
  user:unread:{userId}                    hash conversationId -> unread, non-zero entries only
  conversation:last_message:{conversationId}   the last message as JSON (inbox rows)
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import redis
from psycopg import Cursor

from projections.postgres_projector import ReadModelChanges

POSITION_KEY = "projection:redis:position"
REBUILD_CHUNK = 1000  # users (or conversations) per query and pipeline during a full rebuild

# Move the position forward only: a slow, older writer must never move it back. A missing
# key means Redis lost its data under us (restarted empty): say so instead of recreating it.
_ADVANCE_POSITION = """
local raw = redis.call('GET', KEYS[1])
if not raw then return -1 end
if tonumber(ARGV[1]) > tonumber(raw) then redis.call('SET', KEYS[1], ARGV[1]) end
return tonumber(raw)
"""


class RedisLostError(Exception):
    """Redis no longer holds our position: it lost its data, so everything must be rebuilt."""


def unread_total_key(user_id: str) -> str:
    return f"user:unread_count:{user_id}"


def unread_by_conversation_key(user_id: str) -> str:
    return f"user:unread:{user_id}"


def last_message_key(conversation_id: Any) -> str:
    return f"conversation:last_message:{conversation_id}"


class RedisCounters:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._advance = client.register_script(_ADVANCE_POSITION)

    def position(self) -> int | None:
        """How far Redis reflects the log; None when Redis has no position (lost or new)."""
        raw = self.client.get(POSITION_KEY)
        return int(raw) if raw is not None else None

    def refresh(self, cursor: Cursor[Any], changes: ReadModelChanges) -> dict[str, int]:
        """Recompute every value the batch may have changed, from the committed read model;
        returns the new unread total of every user it recomputed (the relay pushes them)."""
        users = {user for _, user in changes.unread_users}
        if changes.unread_conversations:
            cursor.execute(
                "SELECT DISTINCT user_id FROM read.conversation_participants"
                " WHERE conversation_id = ANY(%s) AND is_active",
                (list(changes.unread_conversations),),
            )
            users.update(row[0] for row in cursor.fetchall())
        pipe = self.client.pipeline(transaction=False)
        totals = self._write_unread(cursor, pipe, sorted(users))
        self._write_last_messages(cursor, pipe, list(changes.last_message_conversations))
        pipe.execute()
        if self._advance(keys=[POSITION_KEY], args=[changes.position]) == -1:
            raise RedisLostError("the Redis projection's position is gone")
        return totals

    def rebuild(self, cursor: Cursor[Any], position: int) -> None:
        """Recompute everything (Redis lost its data, or `loopify replay`)."""
        cursor.execute("SELECT DISTINCT user_id FROM read.conversation_participants ORDER BY user_id")
        users = [row[0] for row in cursor.fetchall()]
        cursor.execute("SELECT id FROM read.conversations ORDER BY id")
        conversations = [row[0] for row in cursor.fetchall()]
        for start in range(0, max(len(users), len(conversations)), REBUILD_CHUNK):
            pipe = self.client.pipeline(transaction=False)
            self._write_unread(cursor, pipe, users[start : start + REBUILD_CHUNK])
            self._write_last_messages(cursor, pipe, conversations[start : start + REBUILD_CHUNK])
            pipe.execute()
        self.client.set(POSITION_KEY, position)

    # ---- values -------------------------------------------------------------------------------

    def _write_unread(self, cursor: Cursor[Any], pipe: Any, users: list[str]) -> dict[str, int]:
        if not users:
            return {}
        cursor.execute(
            "SELECT p.user_id, p.conversation_id, greatest(c.last_seq - p.read_up_to, 0)"
            " FROM read.conversation_participants p JOIN read.conversations c ON c.id = p.conversation_id"
            " WHERE p.user_id = ANY(%s) AND p.is_active",
            (users,),
        )
        per_user: dict[str, dict[str, int]] = defaultdict(dict)
        for user, conversation_id, unread in cursor.fetchall():
            if unread:
                per_user[user][str(conversation_id)] = int(unread)
        totals: dict[str, int] = {}
        for user in users:
            counts = per_user.get(user, {})
            totals[user] = sum(counts.values())
            pipe.set(unread_total_key(user), totals[user])
            pipe.delete(unread_by_conversation_key(user))
            if counts:
                pipe.hset(unread_by_conversation_key(user), mapping=counts)
        return totals

    def _write_last_messages(self, cursor: Cursor[Any], pipe: Any, conversations: Iterable[Any]) -> None:
        conversation_ids = list(conversations)
        if not conversation_ids:
            return
        cursor.execute(
            "SELECT c.id, m.id, m.sender_id, m.content, m.message_type, m.seq, m.created_at, m.edited_at, m.deleted_at"
            " FROM read.conversations c LEFT JOIN read.messages m ON m.id = c.last_message_id"
            " WHERE c.id = ANY(%s)",
            (conversation_ids,),
        )
        for conversation_id, message_id, sender, content, message_type, seq, created, edited, deleted in cursor.fetchall():
            if message_id is None:
                pipe.delete(last_message_key(conversation_id))
                continue
            pipe.set(
                last_message_key(conversation_id),
                json.dumps(
                    {
                        "id": str(message_id),
                        "conversationId": str(conversation_id),
                        "senderId": sender,
                        "content": content,
                        "messageType": message_type,
                        "seq": seq,
                        "createdAt": created.isoformat(),
                        "editedAt": edited.isoformat() if edited else None,
                        "deletedAt": deleted.isoformat() if deleted else None,
                    }
                ),
            )
