"""The live relay: committed events out to every api node through Redis pub/sub.

It runs in the projection runner right after a batch is committed to the Postgres read model,
so anything a client receives live is already readable by `sync` and queries. Each event
becomes the exact client frame, encoded once; api nodes forward the text untouched.

Channels keep nodes from receiving all traffic:
  conv:{conversationId}   messages, edits, deletes, receipts, typing — one publish per event,
                          received only by nodes with a member of that conversation connected;
  user:{userId}           membership changes (a node then subscribes to the new conversation's
                          channel and catches up from the read model), and unread counts that
                          have no conversation to go through.

Unread counts changed by a message go through that message's conversation channel, one envelope
per conversation with every member's total ({"kind": "unread", "counts": {userId: total}}): a
message to a 1,000-member group used to cost 1,000 publishes, each parsed by every node.

Envelope: {"kind", "conversationId", "seq"?, "userId"?, "isMember"?, "frame": "<client frame>"}.
Live delivery is at-least-once across relay crashes: `RELAY_POSITION_KEY` records what was
published, and a restarted runner republishes the gap (clients dedupe by id and seq).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any
from uuid import UUID

import orjson
import redis
from psycopg import Cursor

from domain.conversation import Conversation
from projections import redis_batch
from projections.redis_batch import Command

RELAY_POSITION_KEY = "projection:relay:position"
TYPING_KEY = "conversation:typing:{}"  # the seed's set of users typing in a conversation

# A batch's typing changes in event order, in one round trip (one per message cost the relay a
# Redis round trip per MessageSent). ARGV holds (op, key, user) triples: `add`/`rem` for
# TypingChanged, `sent` for a message (it stops the sender's typing). Per triple the reply is
# the set's members afterwards, or nil for a `sent` that stopped nothing. Keys are built by the
# caller, not declared: a single Redis, as everywhere in this project.
_TYPING_CHANGES = """
local out = {}
for i = 1, #ARGV, 3 do
  local op, key, user = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local changed = 1
  if op == 'add' then redis.call('SADD', key, user) else changed = redis.call('SREM', key, user) end
  if op == 'sent' and changed == 0 then out[#out + 1] = false else out[#out + 1] = redis.call('SMEMBERS', key) end
end
return out
"""


def conversation_channel(conversation_id: Any) -> str:
    return f"conv:{conversation_id}"


def user_channel(user_id: str) -> str:
    return f"user:{user_id}"


def frame(event: str, data: dict[str, Any]) -> str:
    return orjson.dumps({"event": event, "data": data}).decode()


def unread_frame(total: int) -> str:
    return frame("unread_count", {"count": total})


def _iso(moment: Any) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment is not None else None


def _uuid(value: Any) -> str | None:
    return str(value) if value is not None else None


class Relay:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def position(self) -> int:
        raw = self.client.get(RELAY_POSITION_KEY)
        return int(raw) if raw is not None else 0

    def publish(
        self,
        events: list[tuple[int, Any]],
        changed_messages: dict[UUID, dict[str, Any]] | None = None,
        *,
        then: Callable[[], Sequence[Command]] | None = None,
    ) -> list[Any]:
        """Publish a committed batch, and run what `then` builds (the runner's Redis projection
        writes) after its frames in the same round trip; returns the replies of `then`'s
        commands. `then` is called once the frames are written, so they are on their way while
        it works (for a message to a large group, an unread count per member).
        `changed_messages` (from `changed_messages`) gives edits and deletions their message
        as it now stands.

        A message stops its sender's typing: the typing script runs first in that same round
        trip, and the typing frames it calls for (the sender was typing) follow in a second one
        only when there are any. A batch with explicit typing changes needs the typing sets for
        its frames, so it runs the script in a round trip of its own first."""
        changed_messages = changed_messages or {}
        typing = _typing_args(events)
        commands: list[Command] = []
        lists: Iterator[list[bytes] | None] | None = None
        if any(isinstance(e, Conversation.TypingChanged) for _, e in events):
            lists = iter(self._apply_typing(typing))  # their frames carry the sets: script first
        elif typing:
            commands.append(("EVAL", _TYPING_CHANGES, 0, *typing))  # ahead of the frames
        commands += [
            ("PUBLISH", channel, envelope)
            for position, event in events
            for channel, envelope in self._envelopes(position, event, changed_messages, lists)
        ]
        if events:
            commands.append(("SET", RELAY_POSITION_KEY, events[-1][0]))
        replies = redis_batch.execute(self.client, commands, then=then)
        if lists is None and typing:
            late = [("PUBLISH", channel, envelope) for channel, envelope in _stopped_typing(events, replies[0])]
            redis_batch.execute(self.client, late)
        return replies[len(commands) :]

    def publish_unread(self, unread_totals: dict[str, int], via: dict[str, str]) -> None:
        """Each user's new unread total, to their devices (after the batch's messages: a
        message to a large group changes a count per member, and the message comes first).
        A user with a conversation in `via` gets it in that conversation's one envelope."""
        by_conversation: dict[str, dict[str, int]] = {}
        commands: list[Command] = []
        for user, total in unread_totals.items():
            cid = via.get(user)
            if cid is not None:
                by_conversation.setdefault(cid, {})[user] = total
            else:
                commands.append(("PUBLISH", user_channel(user), _envelope("user", None, unread_frame(total))))
        for cid, counts in by_conversation.items():
            envelope = orjson.dumps({"kind": "unread", "conversationId": cid, "counts": counts}).decode()
            commands.append(("PUBLISH", conversation_channel(cid), envelope))
        redis_batch.execute(self.client, commands)

    # ---- envelopes per event --------------------------------------------------------------

    def _apply_typing(self, args: list[str]) -> list[list[bytes] | None]:
        """Record typing changes; per change, who types afterwards (see the script)."""
        return list(redis_batch.execute(self.client, [("EVAL", _TYPING_CHANGES, 0, *args)])[0]) if args else []

    def _envelopes(
        self, position: int, e: Any, changed: dict[UUID, dict[str, Any]], typing_lists: Iterator[list[bytes] | None] | None
    ) -> Iterable[tuple[str, str]]:
        """The envelopes of one event. `typing_lists` are the typing script's replies, one per
        MessageSent and TypingChanged; None: not known yet (see `publish`), no typing frame for
        a MessageSent here."""
        cid = str(e.originator_id)
        if isinstance(e, Conversation.MessageSent):
            message = {
                "id": str(e.message_id), "conversationId": cid, "senderId": e.actor_id, "content": e.content,
                "messageType": e.message_type, "parentMessageId": _uuid(e.parent_message_id), "seq": e.seq,
                "clientMessageId": e.client_message_id, "createdAt": _iso(e.timestamp), "editedAt": None,
                "deletedAt": None, "deliveryStatus": "SENT",
            }
            body = frame("message_received", {"message": message, "conversationId": cid})
            yield conversation_channel(cid), _envelope("message", cid, body, seq=e.seq, messageId=str(e.message_id))
            # Sending stops the sender's typing (the aggregate records no separate event for it).
            typing = next(typing_lists) if typing_lists is not None else None
            if typing is not None:
                yield conversation_channel(cid), _typing_envelope(cid, typing)
        elif isinstance(e, (Conversation.MessageEdited, Conversation.MessageDeleted)):
            name = "message_updated" if isinstance(e, Conversation.MessageEdited) else "message_deleted"
            message = changed.get(e.message_id) or {"id": str(e.message_id), "conversationId": cid, "seq": e.seq}
            body = frame(name, {"message": message, "conversationId": cid, "messageId": str(e.message_id)})
            yield conversation_channel(cid), _envelope("update", cid, body)
        elif isinstance(e, Conversation.MessageRead):
            body = frame(
                "messages_read",
                {"conversationId": cid, "userId": e.actor_id, "readAt": _iso(e.timestamp), "upToSeq": e.up_to_seq},
            )
            yield conversation_channel(cid), _envelope("receipt", cid, body)
        elif isinstance(e, Conversation.MessagesDelivered):
            body = frame(
                "messages_delivered",
                {"conversationId": cid, "userId": e.actor_id, "deliveredAt": _iso(e.timestamp), "upToSeq": e.up_to_seq},
            )
            yield conversation_channel(cid), _envelope("receipt", cid, body)
        elif isinstance(e, Conversation.TypingChanged):
            assert typing_lists is not None  # a batch with typing changes runs the script first
            yield conversation_channel(cid), _typing_envelope(cid, next(typing_lists) or [])
        elif isinstance(e, Conversation.ConversationStarted):
            for user in e.participant_ids:
                yield user_channel(user), _membership(cid, user, True, position, since_seq=0)
        elif isinstance(e, Conversation.ParticipantJoined):
            yield user_channel(e.user_id), _membership(cid, e.user_id, True, position, since_seq=e.since_seq)
        elif isinstance(e, Conversation.ParticipantLeft):
            yield user_channel(e.user_id), _membership(cid, e.user_id, False, position)

    @staticmethod
    def changed_messages(cursor: Cursor[Any], events: list[tuple[int, Any]]) -> dict[UUID, dict[str, Any]]:
        """Edited or deleted messages as they now stand in the read model (the runner reads them
        in the batch's own transaction, after its changes)."""
        ids = [e.message_id for _, e in events if isinstance(e, (Conversation.MessageEdited, Conversation.MessageDeleted))]
        if not ids:
            return {}
        cursor.execute(
            "SELECT id, conversation_id, sender_id, content, message_type, parent_message_id, seq,"
            " client_message_id, created_at, edited_at, deleted_at FROM read.messages WHERE id = ANY(%s)",
            (ids,),
        )
        return {
            row[0]: {
                "id": str(row[0]), "conversationId": str(row[1]), "senderId": row[2], "content": row[3],
                "messageType": row[4], "parentMessageId": _uuid(row[5]), "seq": row[6], "clientMessageId": row[7],
                "createdAt": _iso(row[8]), "editedAt": _iso(row[9]), "deletedAt": _iso(row[10]),
                "deliveryStatus": "SENT",
            }
            for row in cursor.fetchall()
        }


def _typing_args(events: list[tuple[int, Any]]) -> list[str]:
    """The typing script's (op, key, user) triples for a batch, in event order."""
    args: list[str] = []
    for _, e in events:
        if isinstance(e, Conversation.MessageSent):
            args += ("sent", TYPING_KEY.format(e.originator_id), e.actor_id)
        elif isinstance(e, Conversation.TypingChanged):
            args += ("add" if e.is_typing else "rem", TYPING_KEY.format(e.originator_id), e.actor_id)
    return args


def _stopped_typing(events: list[tuple[int, Any]], typing_lists: list[list[bytes] | None]) -> Iterator[tuple[str, str]]:
    """The typing frames of the messages whose senders were typing (a batch of messages only)."""
    sent = (e for _, e in events if isinstance(e, Conversation.MessageSent))
    for e, typing in zip(sent, typing_lists):
        if typing is not None:
            cid = str(e.originator_id)
            yield conversation_channel(cid), _typing_envelope(cid, typing)


def _typing_envelope(conversation_id: str, typing: list[bytes]) -> str:
    body = frame("typing_update", {"conversationId": conversation_id, "typingUsers": sorted(m.decode() for m in typing)})
    return _envelope("typing", conversation_id, body)


def _envelope(kind: str, conversation_id: str | None, body: str, **extra: Any) -> str:
    return orjson.dumps({"kind": kind, "conversationId": conversation_id, **extra, "frame": body}).decode()


def _membership(conversation_id: str, user_id: str, is_member: bool, position: int, since_seq: int = 0) -> str:
    return orjson.dumps(
        {"kind": "membership", "conversationId": conversation_id, "userId": user_id, "isMember": is_member,
         "position": position, "sinceSeq": since_seq, "frame": None}
    ).decode()
