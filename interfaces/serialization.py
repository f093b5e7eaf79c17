"""Records to the JSON shapes of the contracts (design.md §4 message JSON, GraphQL types).

One place, so the WebSocket gateway and GraphQL can never disagree on a field name.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from application.results import ConversationRecord, MessageRecord
from projections.views import ConversationView, MessageView, OnlineStatusView, Page, ParticipantView

T = TypeVar("T")


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment is not None else None


def message_json(message: MessageRecord | MessageView, delivery_status: str = "SENT") -> dict[str, Any]:
    return {
        "id": str(message.id),
        "conversationId": str(message.conversation_id),
        "senderId": message.sender_id,
        "content": message.content,
        "messageType": message.message_type,
        "parentMessageId": str(message.parent_message_id) if message.parent_message_id else None,
        "seq": message.seq,
        "clientMessageId": message.client_message_id,
        "createdAt": iso(message.created_at),
        "editedAt": iso(message.edited_at),
        "deletedAt": iso(message.deleted_at),
        "deliveryStatus": delivery_status,
    }


def conversation_json(conversation: ConversationRecord, viewer_id: str) -> dict[str, Any]:
    members = [(user, True) for user in conversation.participant_ids]
    members += [(user, False) for user in conversation.inactive_ids]
    return {
        "id": str(conversation.id),
        "type": conversation.type,
        "title": conversation.title,
        "itemId": conversation.item_id,
        "participants": [
            {
                "userId": user,
                "isActive": is_active,
                "lastReadSeq": conversation.read_up_to.get(user, 0),
                "lastDeliveredSeq": conversation.delivered_up_to.get(user, 0),
            }
            for user, is_active in members
        ],
        "lastMessage": None,  # served by the read model (conversation queries)
        "lastMessageAt": None,
        "unreadCount": max(0, conversation.last_seq - conversation.read_up_to.get(viewer_id, 0)),
        "createdAt": iso(conversation.created_at),
        "updatedAt": iso(conversation.updated_at),
    }


# ---- read-model views (GraphQL queries) ---------------------------------------------------------


def message_view_json(message: MessageView) -> dict[str, Any]:
    return message_json(message, message.delivery_status)


def participant_view_json(participant: ParticipantView) -> dict[str, Any]:
    return {
        "userId": participant.user_id,
        "isActive": participant.is_active,
        "joinedAt": iso(participant.joined_at),
        "lastReadSeq": participant.last_read_seq,
        "lastReadAt": iso(participant.last_read_at),
        "lastDeliveredSeq": participant.last_delivered_seq,
    }


def conversation_view_json(conversation: ConversationView) -> dict[str, Any]:
    last = conversation.last_message
    return {
        "id": str(conversation.id),
        "type": conversation.type,
        "title": conversation.title,
        "itemId": conversation.item_id,
        "participants": [participant_view_json(p) for p in conversation.participants],
        "lastMessage": message_view_json(last) if last is not None else None,
        "lastMessageAt": iso(conversation.last_message_at),
        "unreadCount": conversation.unread_count,
        "createdAt": iso(conversation.created_at),
        "updatedAt": iso(conversation.updated_at),
    }


def online_status_json(status: OnlineStatusView) -> dict[str, Any]:
    return {"userId": status.user_id, "isOnline": status.is_online, "lastSeen": iso(status.last_seen)}


def connection_json(page: Page[T], node_json: Callable[[T], dict[str, Any]]) -> dict[str, Any]:
    """A Relay connection: `edges {cursor node}` and `pageInfo {hasNextPage endCursor}`."""
    return {
        "edges": [{"cursor": cursor, "node": node_json(node)} for cursor, node in page.items],
        "pageInfo": {"hasNextPage": page.has_next_page, "endCursor": page.end_cursor},
    }
