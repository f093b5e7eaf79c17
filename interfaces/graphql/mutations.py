"""Resolvers of the Mutation root type: each turns arguments into one service call."""

from __future__ import annotations

from typing import Any

from interfaces.graphql.context import context_of, parse_id
from interfaces.serialization import conversation_json, message_json


async def start_conversation(_: Any, args: dict[str, Any], ctx: dict[str, Any], __: Any) -> dict[str, Any]:
    request = context_of(ctx)
    user = request.require_user()
    spec = args["input"]
    result = await request.service.start_conversation(
        user, spec["type"], list(spec["participantIds"]), spec.get("title"), spec.get("itemId")
    )
    await request.after_write(result.position)
    return conversation_json(result.value, user)


async def send_message(_: Any, args: dict[str, Any], ctx: dict[str, Any], __: Any) -> dict[str, Any]:
    request = context_of(ctx)
    user = request.require_user()
    spec = args["input"]
    parent = spec.get("parentMessageId")
    result = await request.service.send_message(
        user,
        parse_id(spec["conversationId"], "conversationId"),
        spec["content"],
        spec.get("messageType") or "TEXT",
        parse_id(parent, "parentMessageId") if parent else None,
        spec.get("clientMessageId"),
    )
    await request.after_write(result.position)
    return message_json(result.value)


async def mark_conversation_as_read(_: Any, args: dict[str, Any], ctx: dict[str, Any], __: Any) -> dict[str, Any]:
    request = context_of(ctx)
    user = request.require_user()
    result = await request.service.mark_read(user, parse_id(args["conversationId"], "conversationId"))
    receipt = result.value
    await request.after_write(result.position)
    return {"success": True, "message": f"read up to seq {receipt.up_to_seq}"}


async def edit_message(_: Any, args: dict[str, Any], ctx: dict[str, Any], __: Any) -> dict[str, Any]:
    request = context_of(ctx)
    user = request.require_user()
    result = await request.service.edit_message(user, parse_id(args["messageId"], "messageId"), args["content"])
    await request.after_write(result.position)
    return message_json(result.value)


async def delete_message(_: Any, args: dict[str, Any], ctx: dict[str, Any], __: Any) -> dict[str, Any]:
    request = context_of(ctx)
    user = request.require_user()
    result = await request.service.delete_message(user, parse_id(args["messageId"], "messageId"))
    await request.after_write(result.position)
    return {"success": True, "message": "message deleted"}


async def add_participant(_: Any, args: dict[str, Any], ctx: dict[str, Any], __: Any) -> dict[str, Any]:
    request = context_of(ctx)
    user = request.require_user()
    conversation_id = parse_id(args["conversationId"], "conversationId")
    result = await request.service.add_participant(user, conversation_id, args["userId"])
    await request.after_write(result.position)
    return conversation_json(result.value, user)


async def remove_participant(_: Any, args: dict[str, Any], ctx: dict[str, Any], __: Any) -> dict[str, Any]:
    request = context_of(ctx)
    user = request.require_user()
    conversation_id = parse_id(args["conversationId"], "conversationId")
    result = await request.service.remove_participant(user, conversation_id, args["userId"])
    await request.after_write(result.position)
    return conversation_json(result.value, user)


MUTATION_RESOLVERS = {
    "Mutation.startConversation": start_conversation,
    "Mutation.sendMessage": send_message,
    "Mutation.markConversationAsRead": mark_conversation_as_read,
    "Mutation.editMessage": edit_message,
    "Mutation.deleteMessage": delete_message,
    "Mutation.addParticipant": add_participant,
    "Mutation.removeParticipant": remove_participant,
}
