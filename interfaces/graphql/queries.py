"""Resolvers of the Query root type: each authenticates, waits for the user's own writes to be
projected (read-your-writes), asks the read model once, and serialises the answer."""

from __future__ import annotations

from typing import Any

from interfaces.graphql.context import context_of, parse_id
from interfaces.serialization import (
    connection_json,
    conversation_view_json,
    message_view_json,
    online_status_json,
)


async def viewer(_: Any, __: dict[str, Any], ctx: dict[str, Any], ___: Any) -> dict[str, Any]:
    return {"id": context_of(ctx).require_user()}


async def conversations(_: Any, args: dict[str, Any], ctx: dict[str, Any], __: Any) -> dict[str, Any]:
    request = context_of(ctx)
    user = await request.before_read()
    page = await request.read_model.list_conversations(user, args["first"], args.get("after"))
    return connection_json(page, conversation_view_json)


async def conversation(_: Any, args: dict[str, Any], ctx: dict[str, Any], __: Any) -> dict[str, Any]:
    request = context_of(ctx)
    user = await request.before_read()
    view = await request.read_model.get_conversation(user, parse_id(args["id"], "id"))
    return conversation_view_json(view)


async def conversation_messages(_: Any, args: dict[str, Any], ctx: dict[str, Any], __: Any) -> dict[str, Any]:
    request = context_of(ctx)
    user = await request.before_read()
    conversation_id = parse_id(args["conversationId"], "conversationId")
    page = await request.read_model.list_messages(user, conversation_id, args["first"], args.get("after"))
    return connection_json(page, message_view_json)


async def message(_: Any, args: dict[str, Any], ctx: dict[str, Any], __: Any) -> dict[str, Any]:
    request = context_of(ctx)
    user = await request.before_read()
    view = await request.read_model.get_message(user, parse_id(args["id"], "id"))
    return message_view_json(view)


async def unread_message_count(_: Any, __: dict[str, Any], ctx: dict[str, Any], ___: Any) -> int:
    request = context_of(ctx)
    user = await request.before_read()
    count: int = await request.read_model.unread_count(user)
    return count


async def users_online_status(_: Any, args: dict[str, Any], ctx: dict[str, Any], __: Any) -> list[dict[str, Any]]:
    request = context_of(ctx)
    await request.before_read()  # presence is for signed-in users only
    statuses = await request.read_model.online_statuses([str(user) for user in args["userIds"]])
    return [online_status_json(status) for status in statuses]


async def search_messages(_: Any, args: dict[str, Any], ctx: dict[str, Any], __: Any) -> dict[str, Any]:
    request = context_of(ctx)
    user = await request.before_read()
    raw_conversation = args.get("conversationId")
    conversation_id = parse_id(raw_conversation, "conversationId") if raw_conversation is not None else None
    page = await request.read_model.search_messages(
        user, args["query"], conversation_id, args["first"], args.get("after")
    )
    return connection_json(page, message_view_json)


QUERY_RESOLVERS = {
    "Query.viewer": viewer,
    "Query.conversations": conversations,
    "Query.conversation": conversation,
    "Query.conversationMessages": conversation_messages,
    "Query.message": message,
    "Query.unreadMessageCount": unread_message_count,
    "Query.usersOnlineStatus": users_online_status,
    "Query.searchMessages": search_messages,
}
