"""One handler per client event of /ws (design.md §4), listed in `HANDLERS`.

A handler returns the `ack` data for a frame that carried an `id`, or raises an error that
the endpoint turns into an `error` frame with a code (interfaces/errors.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from interfaces.errors import BadRequestError, RateLimitedError
from interfaces.runtime import Runtime
from interfaces.serialization import message_json
from interfaces.ws.connection import Connection
from interfaces.ws.protocol import (
    field_bool,
    field_id,
    field_int,
    field_str,
    optional_id,
    optional_int,
    optional_str,
)

SYNC_PAGE = 500  # messages per read-model query while syncing
SYNC_MAX_PER_CONVERSATION = 10_000  # beyond this a client should page history over GraphQL
MAX_SYNC_CONVERSATIONS = 1000


@dataclass
class Session:
    runtime: Runtime
    connection: Connection

    @property
    def user(self) -> str:
        return self.connection.user_id

    async def written(self, position: int | None) -> None:
        if self.runtime.note_write is not None:
            await self.runtime.note_write(self.user, position)

    async def caught_up(self) -> None:
        if self.runtime.wait_for_own_writes is not None:
            await self.runtime.wait_for_own_writes(self.user)


Handler = Callable[[Session, dict[str, Any]], Awaitable[dict[str, Any] | None]]


async def join_conversation(session: Session, data: dict[str, Any]) -> dict[str, Any]:
    conversation_id = field_id(data, "conversationId")
    await session.caught_up()
    await session.runtime.read_model.get_conversation(session.user, conversation_id)  # 404 / 403
    if session.runtime.hub is not None:
        await session.runtime.hub.track(session.connection, str(conversation_id))
    session.connection.joined.add(str(conversation_id))
    session.connection.send("joined_conversation", {"conversationId": str(conversation_id)})
    return {"conversationId": str(conversation_id)}


async def leave_conversation(session: Session, data: dict[str, Any]) -> dict[str, Any]:
    conversation_id = str(field_id(data, "conversationId"))
    session.connection.joined.discard(conversation_id)
    session.connection.send("left_conversation", {"conversationId": conversation_id})
    return {"conversationId": conversation_id}


async def send_message(session: Session, data: dict[str, Any]) -> dict[str, Any]:
    conversation_id = field_id(data, "conversationId")
    cid = str(conversation_id)
    content = field_str(data, "content")
    client_message_id = optional_str(data, "clientMessageId")
    guard = session.runtime.send_guard
    if guard is not None:
        admission = await guard.admit(cid, session.user, client_message_id)
        if admission.cached_ack is not None:  # a quick retry: the same ack, without touching the write side
            return orjson.loads(admission.cached_ack)
        if not admission.allowed:
            raise RateLimitedError("too many messages; slow down and retry in a minute")
    result = await session.runtime.service.send_message(  # type: ignore[union-attr]
        session.user,
        conversation_id,
        content,
        optional_str(data, "messageType") or "TEXT",
        optional_id(data, "parentMessageId"),
        client_message_id,
    )
    ack = {"message": message_json(result.value)}
    session.connection.note_own_message(ack["message"]["id"])
    if guard is not None:
        # Read-your-writes position, end of the sender's typing, the ack kept for retries: on
        # their way to Redis before this ack leaves, ahead of this node's later calls.
        retry_key = admission.retry_key
        kept = orjson.dumps(ack).decode() if retry_key else None  # only a retry can ask for it again
        guard.record(cid, session.user, position=result.position, retry_key=retry_key, ack=kept)
    else:
        await session.written(result.position)
    return ack


async def edit_message(session: Session, data: dict[str, Any]) -> dict[str, Any]:
    result = await session.runtime.service.edit_message(  # type: ignore[union-attr]
        session.user, field_id(data, "messageId"), field_str(data, "content")
    )
    await session.written(result.position)
    return {"message": message_json(result.value)}


async def delete_message(session: Session, data: dict[str, Any]) -> dict[str, Any]:
    result = await session.runtime.service.delete_message(session.user, field_id(data, "messageId"))  # type: ignore[union-attr]
    await session.written(result.position)
    return {"message": message_json(result.value)}


async def typing(session: Session, data: dict[str, Any]) -> dict[str, Any]:
    conversation_id = field_id(data, "conversationId")
    is_typing = field_bool(data, "isTyping")
    cid = str(conversation_id)
    known = session.connection.seen_seq
    if cid not in known and cid not in session.connection.joined:  # new to this device: ask the read model
        # A refresh every 3 s would otherwise cost a Postgres query each; after a leave the hub
        # drops the conversation from both sets, and the write side checks membership anyway.
        await session.caught_up()
        await session.runtime.read_model.get_conversation(session.user, conversation_id)  # 404 / 403
    gate = session.runtime.typing_gate
    if is_typing:
        # Refreshes extend the 6 s expiry; only a start every 3 s reaches the event store.
        if gate is None or await gate.refresh(cid, session.user):
            await session.runtime.service.set_typing(session.user, conversation_id, True)  # type: ignore[union-attr]
    else:
        if gate is not None:
            await gate.stop(cid, session.user)
        await session.runtime.service.set_typing(session.user, conversation_id, False)  # type: ignore[union-attr]
    return {"conversationId": cid, "isTyping": is_typing}


async def mark_as_read(session: Session, data: dict[str, Any]) -> dict[str, Any]:
    conversation_id = field_id(data, "conversationId")
    result = await session.runtime.service.mark_read(session.user, conversation_id, optional_int(data, "upToSeq"))  # type: ignore[union-attr]
    await session.written(result.position)
    return {"conversationId": str(conversation_id), "upToSeq": result.value.up_to_seq}


async def mark_delivered(session: Session, data: dict[str, Any]) -> dict[str, Any]:
    conversation_id = field_id(data, "conversationId")
    result = await session.runtime.service.mark_delivered(session.user, conversation_id, field_int(data, "upToSeq"))  # type: ignore[union-attr]
    await session.written(result.position)
    return {"conversationId": str(conversation_id), "upToSeq": result.value.up_to_seq}


async def heartbeat(session: Session, data: dict[str, Any]) -> dict[str, Any]:
    session.connection.send("heartbeat_ack", {})
    if session.runtime.presence is not None:
        await session.runtime.presence.touch(session.user)
    return {}


async def sync(session: Session, data: dict[str, Any]) -> dict[str, Any]:
    """Every message after each given seq, in order, then `synced` (duplicates are harmless)."""
    wanted = data.get("conversations")
    if not isinstance(wanted, dict) or len(wanted) > MAX_SYNC_CONVERSATIONS:
        raise BadRequestError(f"conversations must map at most {MAX_SYNC_CONVERSATIONS} ids to the last seq seen")
    cursors = {field_id({"id": cid}, "id"): field_int({"seq": seq}, "seq") for cid, seq in wanted.items()}
    await session.caught_up()
    read_model = session.runtime.read_model
    reached: dict[str, int] = {}
    for conversation_id, after in cursors.items():
        cid = str(conversation_id)
        sent = 0
        while sent < SYNC_MAX_PER_CONVERSATION:
            page = await read_model.messages_after(conversation_id, after, SYNC_PAGE, user_id=session.user)
            for message in page:
                session.connection.send(
                    "message_received",
                    {"message": message_json(message, message.delivery_status), "conversationId": cid},
                )
                after = message.seq
            sent += len(page)
            if len(page) < SYNC_PAGE:
                break
        reached[cid] = after
        seen = session.connection.seen_seq
        if cid in seen:
            seen[cid] = max(seen[cid], after)
    session.connection.send("synced", {"conversations": reached})
    return {"conversations": reached}


async def already_connected(session: Session, data: dict[str, Any]) -> dict[str, Any]:
    return {"userId": session.user}


HANDLERS: dict[str, Handler] = {
    "connect": already_connected,
    "join_conversation": join_conversation,
    "leave_conversation": leave_conversation,
    "send_message": send_message,
    "edit_message": edit_message,
    "delete_message": delete_message,
    "typing": typing,
    "mark_as_read": mark_as_read,
    "mark_delivered": mark_delivered,
    "heartbeat": heartbeat,
    "sync": sync,
}
