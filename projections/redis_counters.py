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

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import orjson
import redis
from psycopg import Cursor

from projections import redis_batch
from projections.postgres_projector import ReadModelChanges
from projections.redis_batch import Arg, Command

POSITION_KEY = "projection:redis:position"
# (user_id, conversation_id, unread, the conversation's last seq): one active membership
Membership = tuple[str, Any, int, int]
# Whose unread counts a batch may have changed: (users, conversations); see `unread_keys`
UnreadKeys = tuple[list[str], list[Any]]
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


@dataclass
class DerivedValues:
    """What a batch changed in Redis, read from Postgres; written by `RedisCounters.write`."""

    unread: dict[str, dict[str, int]]  # user -> conversation -> unread (non-zero only)
    # user -> a conversation of this batch's messages they are a member of: their new total
    # may go out on its channel (users not in it, whose own membership changed, go direct)
    via: dict[str, str]
    last_messages: dict[str, str | None]  # conversation -> inbox JSON (None: no message left)
    position: int


class RedisCounters:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def position(self) -> int | None:
        """How far Redis reflects the log; None when Redis has no position (lost or new)."""
        raw = self.client.get(POSITION_KEY)
        return int(raw) if raw is not None else None

    def refresh(self, cursor: Cursor[Any], changes: ReadModelChanges) -> dict[str, int]:
        """Recompute every value the batch may have changed, from the committed read model;
        returns the new unread total of every user it recomputed (the relay pushes them)."""
        return self.write(self.read(cursor, changes))

    def read(self, cursor: Cursor[Any], changes: ReadModelChanges) -> DerivedValues:
        """The values the batch may have changed, as the read model holds them (the live runner
        has `apply_batch` return the memberships within the batch's own transaction, and calls
        `derive`)."""
        keys = unread_keys(changes)
        return self.derive(cursor, changes, keys, self._read_memberships(cursor, *keys))

    def derive(
        self, cursor: Cursor[Any], changes: ReadModelChanges, keys: UnreadKeys, memberships: list[Membership]
    ) -> DerivedValues:
        """The batch's values, from the memberships of its `unread_keys` (the cursor reads back
        only the inbox rows the batch itself cannot give)."""
        users, conversations = keys
        last_seqs = {conversation_id: last_seq for _, conversation_id, _, last_seq in memberships}
        return DerivedValues(
            unread=_unread_by_user(memberships, users),
            via=_routes(memberships, conversations, users),
            last_messages=self._last_messages(cursor, changes, last_seqs),
            position=changes.position,
        )

    def write(self, values: DerivedValues) -> dict[str, int]:
        """Write the values and advance the position, in one round trip; returns unread totals."""
        commands, totals = self.commands(values)
        self.check(redis_batch.execute(self.client, commands))
        return totals

    def commands(self, values: DerivedValues) -> tuple[list[Command], dict[str, int]]:
        """What `write` runs (the live runner sends it with the relay's frames, `Relay.publish`),
        and the unread totals it sets. The position advances last; `check` reads its reply."""
        commands: list[Command] = []
        totals = _unread_commands(commands, values.unread)
        _last_message_commands(commands, values.last_messages)
        # EVAL, not EVALSHA: Redis caches the script by its hash anyway, and a restarted Redis
        # (scripts are not persisted) can never answer NOSCRIPT in the middle of a batch.
        commands.append(("EVAL", _ADVANCE_POSITION, 1, POSITION_KEY, values.position))
        return commands, totals

    @staticmethod
    def check(replies: list[Any]) -> None:
        """After `commands` ran (their replies): raise if Redis had lost our position."""
        if replies[-1] == -1:
            raise RedisLostError("the Redis projection's position is gone")

    def rebuild(self, cursor: Cursor[Any], position: int) -> None:
        """Recompute everything (Redis lost its data, or `loopify replay`)."""
        cursor.execute("SELECT DISTINCT user_id FROM read.conversation_participants ORDER BY user_id")
        users = [row[0] for row in cursor.fetchall()]
        cursor.execute("SELECT id FROM read.conversations ORDER BY id")
        conversations = [row[0] for row in cursor.fetchall()]
        for start in range(0, max(len(users), len(conversations)), REBUILD_CHUNK):
            commands: list[Command] = []
            chunk = users[start : start + REBUILD_CHUNK]
            _unread_commands(commands, _unread_by_user(self._read_memberships(cursor, chunk, []), chunk))
            _last_message_commands(commands, self._read_last_messages(cursor, conversations[start : start + REBUILD_CHUNK]))
            redis_batch.execute(self.client, commands)
        self.client.set(POSITION_KEY, position)

    # ---- values -------------------------------------------------------------------------------

    @staticmethod
    def _read_memberships(cursor: Cursor[Any], users: list[str], conversations: list[Any]) -> list[Membership]:
        """Every active membership of `users` and of every active member of `conversations` (a
        new message there changed their counts), with its unread count, in one statement."""
        if not users and not conversations:
            return []
        cursor.execute(
            "SELECT p.user_id, p.conversation_id, greatest(c.last_seq - p.read_up_to, 0), c.last_seq"
            " FROM read.conversation_participants p JOIN read.conversations c ON c.id = p.conversation_id"
            " WHERE p.is_active AND p.user_id IN (SELECT unnest(%s::text[]) UNION"
            "  SELECT user_id FROM read.conversation_participants WHERE conversation_id = ANY(%s) AND is_active)",
            (users, conversations),
        )
        return cursor.fetchall()

    @classmethod
    def _last_messages(
        cls, cursor: Cursor[Any], changes: ReadModelChanges, last_seqs: dict[Any, int]
    ) -> dict[str, str | None]:
        """The inbox JSON of each conversation whose last message may have changed. When the
        read model's last seq (`last_seqs`, read with the unread counts) is that of a message
        sent in this batch, the row is the batch's own (edits in the batch included). Only the
        rest is read back: an edit or deletion of an older last message, or a batch applied
        again after later ones (the values come from the read model, whatever the batch)."""
        inbox: dict[str, str | None] = {}
        unknown: list[Any] = []
        for conversation_id in changes.last_message_conversations:
            tip = changes.tips.get(conversation_id)
            row = changes.messages.get(tip[1]) if tip is not None else None
            if row is None or last_seqs.get(conversation_id) != row[2]:
                unknown.append(conversation_id)
                continue
            message_id, _, seq, _, sender, content, message_type, _, _, created, edited, deleted = row
            inbox[str(conversation_id)] = _inbox_json(
                conversation_id, message_id, sender, content, message_type, seq, created, edited, deleted
            )
        inbox.update(cls._read_last_messages(cursor, unknown))
        return inbox

    @staticmethod
    def _read_last_messages(cursor: Cursor[Any], conversation_ids: list[Any]) -> dict[str, str | None]:
        if not conversation_ids:
            return {}
        cursor.execute(
            "SELECT c.id, m.id, m.sender_id, m.content, m.message_type, m.seq, m.created_at, m.edited_at, m.deleted_at"
            " FROM read.conversations c LEFT JOIN read.messages m ON m.id = c.last_message_id"
            " WHERE c.id = ANY(%s)",
            (conversation_ids,),
        )
        return {
            str(row[0]): None if row[1] is None else _inbox_json(*row)  # no message left: no inbox row
            for row in cursor.fetchall()
        }


def unread_keys(changes: ReadModelChanges) -> UnreadKeys:
    """Whose unread counts a batch may have changed: users whose own membership or reads it
    changed, and conversations with new messages (all their members)."""
    return sorted({user for _, user in changes.unread_users}), list(changes.unread_conversations)


def _unread_by_user(memberships: list[Membership], users: list[str]) -> dict[str, dict[str, int]]:
    """Per user, the unread count of each conversation (non-zero only): every user seen, and
    every one of `users` (an empty dict clears their counts)."""
    per_user: dict[str, dict[str, int]] = {user: {} for user in users}
    for user, conversation_id, unread, _ in memberships:
        counts = per_user.setdefault(user, {})
        if unread:
            counts[str(conversation_id)] = int(unread)
    return per_user


def _routes(memberships: list[Membership], conversations: list[Any], users: list[str]) -> dict[str, str]:
    """For each member of `conversations`, one of them: its channel, which their node follows,
    carries their new total. Not for `users`: their own membership or reads changed (a join, a
    leave), so their total goes on their own channel."""
    through, direct = set(conversations), set(users)
    via: dict[str, str] = {}
    for user, conversation_id, _, _ in memberships:
        if conversation_id in through and user not in direct:
            via.setdefault(user, str(conversation_id))
    return via


def _inbox_json(
    conversation_id: Any, message_id: Any, sender: str, content: str | None, message_type: str, seq: int,
    created: datetime, edited: datetime | None, deleted: datetime | None,
) -> str:
    return orjson.dumps(
        {
            "id": str(message_id),
            "conversationId": str(conversation_id),
            "senderId": sender,
            "content": content,
            "messageType": message_type,
            "seq": seq,
            # In UTC whatever the session's time zone: built from events or read back, alike.
            "createdAt": _utc_iso(created),
            "editedAt": _utc_iso(edited) if edited else None,
            "deletedAt": _utc_iso(deleted) if deleted else None,
        }
    ).decode()


def _utc_iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat()


def _unread_commands(commands: list[Command], unread: dict[str, dict[str, int]]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for user, counts in unread.items():
        totals[user] = sum(counts.values())
        commands.append(("SET", unread_total_key(user), totals[user]))
        commands.append(("DEL", unread_by_conversation_key(user)))
        if counts:
            commands.append(("HSET", unread_by_conversation_key(user), *_flatten(counts)))
    return totals


def _last_message_commands(commands: list[Command], last_messages: dict[str, str | None]) -> None:
    for conversation_id, inbox_json in last_messages.items():
        if inbox_json is None:
            commands.append(("DEL", last_message_key(conversation_id)))
        else:
            commands.append(("SET", last_message_key(conversation_id), inbox_json))


def _flatten(counts: dict[str, int]) -> list[Arg]:
    return [item for pair in counts.items() for item in pair]
