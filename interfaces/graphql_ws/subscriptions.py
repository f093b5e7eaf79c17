"""Source streams of the Subscription root type (tartiflette `@Subscription` generators).

Each stream opens its feeds on the socket's device first, then checks access and reads what
it needs, then says it is live. Opening the feed before reading is what makes `messageAdded`
lossless: a message committed after the read is published after it, so it reaches the feed;
one committed before is in the read (or in the `afterSeq` replay). Messages are passed on in
seq order and at most once per subscription, whatever the hub delivers twice.

Each stream yields `{field: value}`; tartiflette's default resolver picks the field and runs
the client's selection set on it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

from interfaces.errors import BadRequestError
from interfaces.graphql.context import context_of, parse_id
from interfaces.graphql_ws.feeds import TYPING_EVENT, scope_of
from interfaces.serialization import message_view_json
from projections.queries import MAX_ONLINE_STATUS_USERS, InvalidUserListError

MESSAGE_EVENT = "message_received"
PRESENCE_EVENT = "presence_update"
UNREAD_EVENT = "unread_count"
REPLAY_PAGE = 500  # messages per read-model query while replaying (the /ws `sync` page)


async def message_added(_: Any, args: dict[str, Any], ctx: dict[str, Any], __: Any) -> AsyncIterator[dict[str, Any]]:
    """New messages of one conversation; with `afterSeq`, first every message after it."""
    request, scope = context_of(ctx), scope_of(ctx)
    user = request.require_user()
    conversation_id = parse_id(args["conversationId"], "conversationId")
    after_seq = args.get("afterSeq")
    if after_seq is not None and after_seq < 0:
        raise BadRequestError("afterSeq must be a non-negative integer")
    cid = str(conversation_id)
    feed = scope.follow(MESSAGE_EVENT, lambda data: data.get("conversationId") == cid)
    await request.before_read()
    view = await request.read_model.get_conversation(user, conversation_id)  # NOT_FOUND / FORBIDDEN
    latest = view.last_message.seq if view.last_message is not None else 0
    scope.now_live()
    cursor = latest if after_seq is None else after_seq
    if after_seq is not None:
        async for message in _replay(request.read_model, user, conversation_id, cursor):
            cursor = message["seq"]
            yield {"messageAdded": message}
    async for data in feed:
        message = data["message"]
        seq = message["seq"]
        if seq <= cursor:
            continue  # replayed already, or the hub delivered it twice
        if seq > cursor + 1:
            # Frames were lost on the way (a Redis outage): seqs are gapless, so fetch the gap.
            async for missed in _replay(request.read_model, user, conversation_id, cursor, until=seq - 1):
                cursor = missed["seq"]
                yield {"messageAdded": missed}
        cursor = seq
        yield {"messageAdded": message}


async def _replay(
    read_model: Any, user: str, conversation_id: UUID, after: int, until: int | None = None
) -> AsyncIterator[dict[str, Any]]:
    """Messages with `after < seq <= until` from the read model, oldest first, page by page."""
    while until is None or after < until:
        limit = REPLAY_PAGE if until is None else min(REPLAY_PAGE, until - after)
        page = await read_model.messages_after(conversation_id, after, limit, user_id=user)
        for message in page:
            after = message.seq
            yield message_view_json(message)
        if len(page) < limit:
            return


async def typing_indicators(_: Any, args: dict[str, Any], ctx: dict[str, Any], __: Any) -> AsyncIterator[dict[str, Any]]:
    """Who is typing in one conversation: the full list after every change."""
    request, scope = context_of(ctx), scope_of(ctx)
    user = request.require_user()
    conversation_id = parse_id(args["conversationId"], "conversationId")
    cid = str(conversation_id)
    # The hub sends typing only to devices that joined the conversation; the feed joins it.
    feed = scope.follow(TYPING_EVENT, lambda data: data.get("conversationId") == cid, conversation_id=cid)
    await request.before_read()
    await request.read_model.get_conversation(user, conversation_id)  # NOT_FOUND / FORBIDDEN
    scope.now_live()
    async for data in feed:
        yield {"typingIndicators": {"conversationId": cid, "typingUsers": list(data.get("typingUsers") or [])}}


async def user_online_status_changed(
    _: Any, args: dict[str, Any], ctx: dict[str, Any], __: Any
) -> AsyncIterator[dict[str, Any]]:
    """Presence changes of the given users, as /ws `presence_update` carries them: for the
    users who share a conversation of at most 100 members with the subscriber."""
    request, scope = context_of(ctx), scope_of(ctx)
    request.require_user()
    watched = {str(user) for user in args["userIds"]}
    if len(watched) > MAX_ONLINE_STATUS_USERS:
        raise InvalidUserListError(f"watch at most {MAX_ONLINE_STATUS_USERS} users at once")
    feed = scope.follow(PRESENCE_EVENT, lambda data: data.get("userId") in watched)
    scope.now_live()
    async for data in feed:
        yield {
            "userOnlineStatusChanged": {
                "userId": data["userId"], "isOnline": bool(data.get("isOnline")), "lastSeen": data.get("lastSeen"),
            }
        }


async def unread_count_updated(_: Any, __: dict[str, Any], ctx: dict[str, Any], ___: Any) -> AsyncIterator[dict[str, Any]]:
    """The subscriber's total unread count after every change."""
    request, scope = context_of(ctx), scope_of(ctx)
    request.require_user()
    feed = scope.follow(UNREAD_EVENT, lambda data: True)
    scope.now_live()
    async for data in feed:
        yield {"unreadCountUpdated": {"count": int(data["count"])}}


SUBSCRIPTION_RESOLVERS = {
    "Subscription.messageAdded": message_added,
    "Subscription.typingIndicators": typing_indicators,
    "Subscription.userOnlineStatusChanged": user_online_status_changed,
    "Subscription.unreadCountUpdated": unread_count_updated,
}
