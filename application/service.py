"""The write side's public face: one method per command, for async callers.

Commands travel to the group-commit writer (a task of the serving loop, or a thread of its own);
the caller only awaits a future, so it never blocks on Postgres."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from application.commands import (
    AddParticipant,
    Command,
    DeleteMessage,
    EditMessage,
    MarkDelivered,
    MarkRead,
    RemoveParticipant,
    SendMessage,
    SetTyping,
    StartConversation,
)
from application.group_commit import GroupCommitWriter
from application.results import CommandResult, ConversationRecord, MessageRecord, WatermarkRecord


class MessagingService:
    def __init__(self, writer: GroupCommitWriter) -> None:
        self.writer = writer

    async def execute(self, command: Command) -> CommandResult[Any]:
        return await self.writer.submit_async(command)

    async def start_conversation(
        self,
        actor_id: str,
        conversation_type: str,
        participant_ids: list[str],
        title: str | None = None,
        item_id: str | None = None,
    ) -> CommandResult[ConversationRecord]:
        return await self.execute(
            StartConversation(actor_id, conversation_type, tuple(participant_ids), title, item_id)
        )

    async def add_participant(self, actor_id: str, conversation_id: UUID, user_id: str) -> CommandResult[ConversationRecord]:
        return await self.execute(AddParticipant(actor_id, conversation_id, user_id))

    async def remove_participant(
        self, actor_id: str, conversation_id: UUID, user_id: str
    ) -> CommandResult[ConversationRecord]:
        return await self.execute(RemoveParticipant(actor_id, conversation_id, user_id))

    async def send_message(
        self,
        actor_id: str,
        conversation_id: UUID,
        content: str,
        message_type: str = "TEXT",
        parent_message_id: UUID | None = None,
        client_message_id: str | None = None,
    ) -> CommandResult[MessageRecord]:
        return await self.execute(
            SendMessage(actor_id, conversation_id, content, message_type, parent_message_id, client_message_id)
        )

    async def edit_message(self, actor_id: str, message_id: UUID, content: str) -> CommandResult[MessageRecord]:
        return await self.execute(EditMessage(actor_id, message_id, content))

    async def delete_message(self, actor_id: str, message_id: UUID) -> CommandResult[MessageRecord]:
        return await self.execute(DeleteMessage(actor_id, message_id))

    async def mark_read(
        self, actor_id: str, conversation_id: UUID, up_to_seq: int | None = None
    ) -> CommandResult[WatermarkRecord]:
        return await self.execute(MarkRead(actor_id, conversation_id, up_to_seq))

    async def mark_delivered(self, actor_id: str, conversation_id: UUID, up_to_seq: int) -> CommandResult[WatermarkRecord]:
        return await self.execute(MarkDelivered(actor_id, conversation_id, up_to_seq))

    async def set_typing(self, actor_id: str, conversation_id: UUID, is_typing: bool) -> CommandResult[WatermarkRecord]:
        return await self.execute(SetTyping(actor_id, conversation_id, is_typing))
