"""Records to the JSON shapes of the contracts (design.md §4 message JSON, GraphQL types).

One place, so the WebSocket gateway and GraphQL can never disagree on a field name.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from application.results import ConversationRecord, MessageRecord


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment is not None else None


def message_json(message: MessageRecord, delivery_status: str = "SENT") -> dict[str, Any]:
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
