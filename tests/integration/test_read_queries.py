"""The read side's queries on a real Postgres and Redis.

Each story drives real `Conversation` aggregates, projects their events with the real projector
(`fold` + `apply`, as the projector process does), then asks `ReadModel` over asyncpg, the way the
GraphQL resolvers do. Covered: the inbox order and its keyset pages, message pages that stay
stable while messages arrive, the access rule (NOT_FOUND vs FORBIDDEN), unread counts, delivery
status, edits and deletes, full-text search, page-size and cursor checks, presence from Redis,
the query plans of the hot queries, and the GraphQL connections on top.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar
from uuid import UUID, uuid4

import asyncpg
import psycopg
import pytest
import redis.asyncio
from tartiflette import Engine

from domain.conversation import Conversation
from domain.errors import ConversationNotFoundError, InvalidInputError, MessageNotFoundError, NotParticipantError
from domain.values import ConversationType, MessageFacts
from interfaces.graphql.context import RequestContext
from interfaces.graphql.engine import build_engine
from interfaces.runtime import Runtime
from projections import queries
from projections.cursors import MAX_BIGINT, InvalidCursorError, encode_message_cursor
from projections.postgres_projector import apply, fold
from projections.queries import MAX_PAGE_SIZE, MAX_SEARCH_QUERY_CHARS, ReadModel
from projections.schema import ensure_read_model, generation_schema
from projections.views import DELIVERED, READ, SENT, MessageView, Page

T = TypeVar("T")
ALICE, BOB, CAROL, DAVE, MALLORY = "alice", "bob", "carol", "dave", "mallory"
GROUP, DIRECT = ConversationType.GROUP, ConversationType.DIRECT
CLOCK_START = datetime(2030, 1, 1, tzinfo=timezone.utc)
POOL_SIZE = 2  # a test asks one question at a time; two proves nothing depends on one connection

Ask = Callable[[Callable[[ReadModel], Awaitable[T]]], T]


# ---- the story: real aggregates, the real projector ---------------------------------------------


class Story:
    """Commands on real `Conversation` aggregates; each command's events are projected at once
    (one batch per command, like a live tail), or inside `batch()` all together (a catch-up)."""

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        with connection.cursor() as cursor:
            self.schema = generation_schema(ensure_read_model(cursor))
        connection.commit()
        self.connection = connection
        self.position = 0
        self.conversations: dict[UUID, Conversation] = {}
        self.facts: dict[UUID, MessageFacts] = {}
        self._pending: list[Any] = []
        self._batching = False

    def start(self, actor: str, others: set[str], kind: ConversationType = GROUP, title: str | None = None) -> UUID:
        conversation = Conversation.start(uuid4(), actor, kind, frozenset(others), title=title)
        self.conversations[conversation.id] = conversation
        self._record(conversation)
        return conversation.id

    def send(self, conversation_id: UUID, sender: str, content: str = "hello") -> UUID:
        conversation = self.conversations[conversation_id]
        message_id = uuid4()
        conversation.send_message(sender, message_id, content)
        self.facts[message_id] = MessageFacts(message_id, conversation_id, sender, conversation.last_seq, False)
        self._record(conversation)
        return message_id

    def edit(self, message_id: UUID, content: str) -> None:
        facts = self.facts[message_id]
        conversation = self.conversations[facts.conversation_id]
        conversation.edit_message(facts.sender_id, facts, content)
        self._record(conversation)

    def delete(self, message_id: UUID) -> None:
        facts = self.facts[message_id]
        conversation = self.conversations[facts.conversation_id]
        conversation.delete_message(facts.sender_id, facts)
        self.facts[message_id] = replace(facts, deleted=True)
        self._record(conversation)

    def read(self, conversation_id: UUID, reader: str, up_to_seq: int | None = None) -> None:
        self.conversations[conversation_id].mark_read(reader, up_to_seq)
        self._record(self.conversations[conversation_id])

    def deliver(self, conversation_id: UUID, recipient: str, up_to_seq: int) -> None:
        self.conversations[conversation_id].mark_delivered(recipient, up_to_seq)
        self._record(self.conversations[conversation_id])

    def add(self, conversation_id: UUID, actor: str, user: str) -> None:
        self.conversations[conversation_id].add_participant(actor, user)
        self._record(self.conversations[conversation_id])

    def leave(self, conversation_id: UUID, user: str) -> None:
        self.conversations[conversation_id].remove_participant(user, user)
        self._record(self.conversations[conversation_id])

    @contextmanager
    def batch(self) -> Iterator[None]:
        self._batching = True
        try:
            yield
        finally:
            self._batching = False
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        numbered = list(enumerate(self._pending, start=self.position + 1))
        self._pending = []
        changes = fold(numbered)
        with self.connection.cursor() as cursor:
            apply(cursor, self.schema, changes, self.position)
        self.connection.commit()
        self.position = changes.position

    def _record(self, conversation: Conversation) -> None:
        self._pending.extend(conversation.collect_events())
        if not self._batching:
            self.flush()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Event timestamps one second apart, so "most recent first" has one right answer."""
    ticks = itertools.count()
    monkeypatch.setattr(
        Conversation.Event, "create_timestamp", staticmethod(lambda: CLOCK_START + timedelta(seconds=next(ticks)))
    )
    yield


@pytest.fixture
def story(database_url: str, clock: None) -> Iterator[Story]:
    with psycopg.connect(database_url) as connection:
        yield Story(connection)


@asynccontextmanager
async def open_read_model(database_url: str, redis_url: str | None) -> AsyncIterator[ReadModel]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=POOL_SIZE)
    client = redis.asyncio.Redis.from_url(redis_url) if redis_url else None
    try:
        yield ReadModel(pool, client)
    finally:
        if client is not None:
            await client.aclose()
        await pool.close()


@pytest.fixture
def ask(database_url: str, redis_url: str) -> Ask[Any]:
    """Ask the read model one question on a fresh event loop (pytest-asyncio is not used)."""

    def ask_(question: Callable[[ReadModel], Awaitable[T]]) -> T:
        async def run() -> T:
            async with open_read_model(database_url, redis_url) as read_model:
                return await question(read_model)

        return asyncio.run(run())

    return ask_


def seqs(page: Page[MessageView]) -> list[int]:
    return [message.seq for _, message in page.items]


# ---- conversations --------------------------------------------------------------------------------


class TestConversationList:
    def test_lists_the_users_active_conversations_most_recent_activity_first(self, story: Story, ask: Ask[Any]) -> None:
        # Alice is in four conversations; one she is not in, one she left.
        first = story.start(ALICE, {BOB}, DIRECT)
        second = story.start(ALICE, {CAROL}, DIRECT)
        third = story.start(DAVE, {ALICE, BOB}, title="Trip")
        story.start(CAROL, {DAVE}, DIRECT)
        left = story.start(ALICE, {BOB, CAROL}, title="Old plans")
        story.leave(left, ALICE)
        # A message moves the first conversation to the top.
        story.send(first, BOB, "still for sale?")

        page = ask(lambda rm: rm.list_conversations(ALICE, 10, None))

        assert [view.id for _, view in page.items] == [first, third, second]
        assert not page.has_next_page
        assert page.end_cursor == page.items[-1][0]

    def test_keyset_pages_follow_each_other_without_gaps_or_repeats(self, story: Story, ask: Ask[Any]) -> None:
        started = [story.start(ALICE, {f"friend-{n}"}, DIRECT) for n in range(7)]
        pages, after = [], None
        while True:
            page = ask(lambda rm: rm.list_conversations(ALICE, 3, after))
            pages.append([view.id for _, view in page.items])
            if not page.has_next_page:
                break
            after = page.end_cursor
        assert pages == [started[6:3:-1], started[3:0:-1], started[0:1]]

    def test_conversations_with_the_same_activity_time_are_paged_by_id_without_loss(
        self, story: Story, ask: Ask[Any]
    ) -> None:
        started = [story.start(ALICE, {f"friend-{n}"}, DIRECT) for n in range(5)]
        # A batch of imports could give several conversations one timestamp: the id breaks ties.
        with story.connection.cursor() as cursor:
            cursor.execute(f"UPDATE {story.schema}.conversations SET activity_at = %s", (CLOCK_START,))
        story.connection.commit()

        seen, after = [], None
        while True:
            page = ask(lambda rm: rm.list_conversations(ALICE, 2, after))
            seen += [view.id for _, view in page.items]
            if not page.has_next_page:
                break
            after = page.end_cursor
        assert seen == sorted(started, key=lambda cid: cid.bytes, reverse=True)

    def test_a_conversation_shows_participants_last_message_and_the_viewers_unread_count(
        self, story: Story, ask: Ask[Any]
    ) -> None:
        chat = story.start(ALICE, {BOB, CAROL}, title="Weekend")
        story.send(chat, ALICE, "who brings the tent?")
        last = story.send(chat, BOB, "I do")
        story.read(chat, CAROL)

        view = ask(lambda rm: rm.get_conversation(ALICE, chat))

        assert (view.type, view.title, view.item_id) == ("GROUP", "Weekend", None)
        assert view.last_message is not None and view.last_message.id == last
        assert view.last_message.content == "I do"
        assert view.last_message_at == view.last_message.created_at
        assert view.unread_count == 1  # Bob's reply
        assert view.created_at < view.updated_at
        members = {p.user_id: p for p in view.participants}
        assert set(members) == {ALICE, BOB, CAROL}
        assert (members[CAROL].last_read_seq, members[CAROL].last_delivered_seq) == (2, 2)
        assert members[CAROL].last_read_at is not None
        assert members[ALICE].joined_at == view.created_at

    def test_people_who_left_are_listed_after_the_active_ones(self, story: Story, ask: Ask[Any]) -> None:
        chat = story.start(ALICE, {BOB, CAROL}, title="Weekend")
        story.leave(chat, BOB)
        view = ask(lambda rm: rm.get_conversation(ALICE, chat))
        assert [(p.user_id, p.is_active) for p in view.participants] == [(ALICE, True), (CAROL, True), (BOB, False)]


# ---- the access rule ---------------------------------------------------------------------------


class TestAccessRule:
    def test_an_unknown_conversation_is_not_found_everywhere(self, story: Story, ask: Ask[Any]) -> None:
        unknown = uuid4()
        with pytest.raises(ConversationNotFoundError):
            ask(lambda rm: rm.get_conversation(ALICE, unknown))
        with pytest.raises(ConversationNotFoundError):
            ask(lambda rm: rm.list_messages(ALICE, unknown, 10, None))
        with pytest.raises(ConversationNotFoundError):
            ask(lambda rm: rm.search_messages(ALICE, "hello", unknown, 10, None))

    def test_someone_elses_conversation_is_forbidden_everywhere(self, story: Story, ask: Ask[Any]) -> None:
        private = story.start(CAROL, {DAVE}, DIRECT)
        message = story.send(private, CAROL, "hello")
        for question in (
            lambda rm: rm.get_conversation(MALLORY, private),
            lambda rm: rm.list_messages(MALLORY, private, 10, None),
            lambda rm: rm.search_messages(MALLORY, "hello", private, 10, None),
            lambda rm: rm.get_message(MALLORY, message),
        ):
            with pytest.raises(NotParticipantError):
                ask(question)

    def test_a_member_who_left_is_forbidden_and_no_longer_sees_it_listed(self, story: Story, ask: Ask[Any]) -> None:
        chat = story.start(ALICE, {BOB, CAROL}, title="Weekend")
        message = story.send(chat, BOB, "hello")
        story.leave(chat, BOB)
        with pytest.raises(NotParticipantError):
            ask(lambda rm: rm.get_conversation(BOB, chat))
        with pytest.raises(NotParticipantError):
            ask(lambda rm: rm.get_message(BOB, message))
        assert ask(lambda rm: rm.list_conversations(BOB, 10, None)).items == []

    def test_an_unknown_message_is_not_found(self, story: Story, ask: Ask[Any]) -> None:
        with pytest.raises(MessageNotFoundError):
            ask(lambda rm: rm.get_message(ALICE, uuid4()))


# ---- messages --------------------------------------------------------------------------------------


class TestMessagePages:
    def test_messages_come_newest_first_each_with_its_own_cursor(self, story: Story, ask: Ask[Any]) -> None:
        chat = story.start(ALICE, {BOB}, DIRECT)
        sent = [story.send(chat, ALICE if n % 2 else BOB, f"message {n}") for n in range(1, 6)]

        page = ask(lambda rm: rm.list_messages(ALICE, chat, 3, None))

        assert [message.id for _, message in page.items] == sent[:1:-1]
        assert seqs(page) == [5, 4, 3]
        assert page.has_next_page and page.end_cursor == page.items[-1][0]
        assert len({cursor for cursor, _ in page.items}) == 3
        rest = ask(lambda rm: rm.list_messages(ALICE, chat, 3, page.end_cursor))
        assert seqs(rest) == [2, 1] and not rest.has_next_page

    def test_paging_250_messages_while_new_ones_arrive_gives_each_exactly_once_in_order(
        self, story: Story, ask: Ask[Any]
    ) -> None:
        chat = story.start(ALICE, {BOB}, DIRECT)
        with story.batch():
            for n in range(1, 251):
                story.send(chat, ALICE if n % 2 else BOB, f"message {n}")

        seen: list[MessageView] = []
        after = None
        while True:
            page = ask(lambda rm: rm.list_messages(ALICE, chat, 40, after))
            seen += [message for _, message in page.items]
            # Between two pages the conversation moves on.
            story.send(chat, BOB, "a new message while Alice scrolls back")
            story.send(chat, ALICE, "and another one")
            if not page.has_next_page:
                break
            after = page.end_cursor

        assert [message.seq for message in seen] == list(range(250, 0, -1))
        assert len({message.id for message in seen}) == 250
        assert [message.content for message in seen[:2]] == ["message 250", "message 249"]

    def test_a_message_is_fetched_by_id(self, story: Story, ask: Ask[Any]) -> None:
        chat = story.start(ALICE, {BOB}, DIRECT)
        message_id = story.send(chat, BOB, "hello there")
        message = ask(lambda rm: rm.get_message(ALICE, message_id))
        assert (message.conversation_id, message.sender_id, message.seq) == (chat, BOB, 1)
        assert (message.content, message.message_type, message.edited_at, message.deleted_at) == (
            "hello there", "TEXT", None, None,
        )


class TestEditsAndDeletes:
    def test_an_edit_shows_the_new_content_and_when_it_was_edited(self, story: Story, ask: Ask[Any]) -> None:
        chat = story.start(ALICE, {BOB}, DIRECT)
        story.send(chat, ALICE, "first")
        typo = story.send(chat, ALICE, "secnod")
        story.edit(typo, "second")

        page = ask(lambda rm: rm.list_messages(BOB, chat, 10, None))

        edited, untouched = (message for _, message in page.items)
        assert (edited.id, edited.content) == (typo, "second")
        assert edited.edited_at is not None and edited.edited_at > edited.created_at
        assert untouched.edited_at is None

    def test_a_deleted_message_keeps_its_place_without_content(self, story: Story, ask: Ask[Any]) -> None:
        chat = story.start(ALICE, {BOB}, DIRECT)
        story.send(chat, ALICE, "one")
        regret = story.send(chat, ALICE, "two")
        story.send(chat, BOB, "three")
        story.delete(regret)

        page = ask(lambda rm: rm.list_messages(BOB, chat, 10, None))

        assert seqs(page) == [3, 2, 1]
        deleted = page.items[1][1]
        assert (deleted.id, deleted.content) == (regret, None)
        assert deleted.deleted_at is not None
        assert ask(lambda rm: rm.get_message(BOB, regret)).content is None

    def test_deleting_the_last_message_shows_in_the_inbox(self, story: Story, ask: Ask[Any]) -> None:
        chat = story.start(ALICE, {BOB}, DIRECT)
        last = story.send(chat, ALICE, "oops")
        story.delete(last)
        view = ask(lambda rm: rm.get_conversation(BOB, chat))
        assert view.last_message is not None
        assert (view.last_message.id, view.last_message.content) == (last, None)


# ---- unread counts and delivery status ----------------------------------------------------------


class TestUnreadCounts:
    def test_the_total_sums_every_active_conversation_and_drops_when_read(self, story: Story, ask: Ask[Any]) -> None:
        direct = story.start(ALICE, {BOB}, DIRECT)
        group = story.start(CAROL, {ALICE, BOB}, title="Weekend")
        for _ in range(3):
            story.send(direct, ALICE, "ping")
        for _ in range(2):
            story.send(group, CAROL, "pong")

        assert ask(lambda rm: rm.unread_count(BOB)) == 5
        story.read(direct, BOB)
        assert ask(lambda rm: rm.unread_count(BOB)) == 2
        story.read(group, BOB, up_to_seq=1)
        assert ask(lambda rm: rm.unread_count(BOB)) == 1
        assert ask(lambda rm: rm.get_conversation(BOB, group)).unread_count == 1

    def test_own_messages_never_count_as_unread(self, story: Story, ask: Ask[Any]) -> None:
        chat = story.start(ALICE, {BOB}, DIRECT)
        story.send(chat, BOB, "hi")
        story.send(chat, ALICE, "hi back")  # sending implies Alice read everything before it
        assert ask(lambda rm: rm.unread_count(ALICE)) == 0
        assert ask(lambda rm: rm.unread_count(BOB)) == 1

    def test_a_conversation_left_no_longer_counts(self, story: Story, ask: Ask[Any]) -> None:
        chat = story.start(ALICE, {BOB, CAROL}, title="Weekend")
        story.send(chat, ALICE, "hi")
        assert ask(lambda rm: rm.unread_count(BOB)) == 1
        story.leave(chat, BOB)
        assert ask(lambda rm: rm.unread_count(BOB)) == 0

    def test_a_user_without_conversations_has_nothing_unread(self, story: Story, ask: Ask[Any]) -> None:
        assert ask(lambda rm: rm.unread_count(MALLORY)) == 0


class TestDeliveryStatus:
    def test_a_direct_message_goes_from_sent_to_delivered_to_read(self, story: Story, ask: Ask[Any]) -> None:
        chat = story.start(ALICE, {BOB}, DIRECT)
        message = story.send(chat, ALICE, "are you there?")
        assert ask(lambda rm: rm.get_message(ALICE, message)).delivery_status == SENT
        story.deliver(chat, BOB, 1)
        assert ask(lambda rm: rm.get_message(ALICE, message)).delivery_status == DELIVERED
        story.read(chat, BOB)
        assert ask(lambda rm: rm.get_message(ALICE, message)).delivery_status == READ

    def test_one_page_shows_each_message_at_its_own_stage(self, story: Story, ask: Ask[Any]) -> None:
        chat = story.start(ALICE, {BOB}, DIRECT)
        for n in range(3):
            story.send(chat, ALICE, f"message {n}")
        story.deliver(chat, BOB, 2)
        story.read(chat, BOB, up_to_seq=1)
        page = ask(lambda rm: rm.list_messages(ALICE, chat, 10, None))
        assert [message.delivery_status for _, message in page.items] == [SENT, DELIVERED, READ]

    def test_a_group_message_is_read_only_once_every_other_member_read_it(self, story: Story, ask: Ask[Any]) -> None:
        chat = story.start(ALICE, {BOB, CAROL}, title="Weekend")
        message = story.send(chat, ALICE, "tent?")
        story.read(chat, BOB)
        assert ask(lambda rm: rm.get_message(ALICE, message)).delivery_status == SENT
        story.deliver(chat, CAROL, 1)
        assert ask(lambda rm: rm.get_message(ALICE, message)).delivery_status == DELIVERED
        story.read(chat, CAROL)
        assert ask(lambda rm: rm.get_message(ALICE, message)).delivery_status == READ

    def test_a_member_who_left_is_not_waited_for(self, story: Story, ask: Ask[Any]) -> None:
        chat = story.start(ALICE, {BOB, CAROL}, title="Weekend")
        message = story.send(chat, ALICE, "tent?")
        story.read(chat, BOB)
        story.leave(chat, CAROL)
        assert ask(lambda rm: rm.get_message(ALICE, message)).delivery_status == READ

    def test_the_inbox_shows_the_last_messages_status(self, story: Story, ask: Ask[Any]) -> None:
        chat = story.start(ALICE, {BOB}, DIRECT)
        story.send(chat, ALICE, "hi")
        story.deliver(chat, BOB, 1)
        (_, view), = ask(lambda rm: rm.list_conversations(ALICE, 10, None)).items
        assert view.last_message is not None and view.last_message.delivery_status == DELIVERED


# ---- search ------------------------------------------------------------------------------------------


class TestSearch:
    @pytest.fixture
    def chats(self, story: Story) -> dict[str, UUID]:
        direct = story.start(ALICE, {BOB}, DIRECT)
        group = story.start(ALICE, {CAROL, DAVE}, title="Cycling club")
        private = story.start(CAROL, {DAVE}, DIRECT)
        story.send(direct, BOB, "The bicycle is still available")
        story.send(direct, ALICE, "Great, I will pick it up tomorrow")
        story.send(group, CAROL, "Bicycle meetup on Sunday")
        story.send(private, CAROL, "My bicycle has a flat tyre")
        return {"direct": direct, "group": group, "private": private}

    def test_finds_messages_by_a_word_in_them_newest_first(
        self, story: Story, ask: Ask[Any], chats: dict[str, UUID]
    ) -> None:
        page = ask(lambda rm: rm.search_messages(ALICE, "bicycle", None, 10, None))
        assert [message.content for _, message in page.items] == [
            "Bicycle meetup on Sunday",
            "The bicycle is still available",
        ]

    def test_never_returns_another_users_message(self, story: Story, ask: Ask[Any], chats: dict[str, UUID]) -> None:
        for user in (ALICE, BOB, MALLORY):
            page = ask(lambda rm: rm.search_messages(user, "tyre bicycle", None, 10, None))
            assert page.items == []
        dave = ask(lambda rm: rm.search_messages(DAVE, "bicycle", None, 10, None))
        assert {message.conversation_id for _, message in dave.items} == {chats["group"], chats["private"]}

    def test_respects_the_conversation_filter(self, story: Story, ask: Ask[Any], chats: dict[str, UUID]) -> None:
        page = ask(lambda rm: rm.search_messages(ALICE, "bicycle", chats["direct"], 10, None))
        assert [message.content for _, message in page.items] == ["The bicycle is still available"]

    def test_excludes_deleted_messages(self, story: Story, ask: Ask[Any], chats: dict[str, UUID]) -> None:
        meetup = ask(lambda rm: rm.search_messages(ALICE, "meetup", None, 10, None)).items[0][1]
        story.delete(meetup.id)
        assert ask(lambda rm: rm.search_messages(ALICE, "meetup", None, 10, None)).items == []

    def test_finds_the_new_words_of_an_edited_message(
        self, story: Story, ask: Ask[Any], chats: dict[str, UUID]
    ) -> None:
        meetup = ask(lambda rm: rm.search_messages(ALICE, "meetup", None, 10, None)).items[0][1]
        story.edit(meetup.id, "Picnic on Sunday")
        assert ask(lambda rm: rm.search_messages(ALICE, "meetup", None, 10, None)).items == []
        assert ask(lambda rm: rm.search_messages(ALICE, "picnic", None, 10, None)).items[0][1].id == meetup.id

    def test_leaving_a_conversation_removes_it_from_the_results(
        self, story: Story, ask: Ask[Any], chats: dict[str, UUID]
    ) -> None:
        story.leave(chats["group"], ALICE)
        page = ask(lambda rm: rm.search_messages(ALICE, "bicycle", None, 10, None))
        assert [message.conversation_id for _, message in page.items] == [chats["direct"]]
        with pytest.raises(NotParticipantError):
            ask(lambda rm: rm.search_messages(ALICE, "bicycle", chats["group"], 10, None))

    def test_results_come_in_keyset_pages(self, story: Story, ask: Ask[Any], chats: dict[str, UUID]) -> None:
        sent = [story.send(chats["direct"], BOB, f"another bicycle, number {n}") for n in range(5)]
        found, after = [], None
        while True:
            page = ask(lambda rm: rm.search_messages(BOB, "bicycle", None, 2, after))
            found += [message.id for _, message in page.items]
            if not page.has_next_page:
                break
            after = page.end_cursor
        assert found[:5] == sent[::-1]
        assert len(found) == 6 == len(set(found))

    def test_results_carry_their_delivery_status(self, story: Story, ask: Ask[Any], chats: dict[str, UUID]) -> None:
        story.read(chats["direct"], ALICE)
        (_, message), = ask(lambda rm: rm.search_messages(BOB, "available", None, 10, None)).items
        assert message.delivery_status == READ


# ---- input checks -------------------------------------------------------------------------------------


class TestInputChecks:
    @pytest.mark.parametrize("first", [0, -1, MAX_PAGE_SIZE + 1])
    def test_first_outside_1_to_100_is_refused_by_every_list(self, story: Story, ask: Ask[Any], first: int) -> None:
        chat = story.start(ALICE, {BOB}, DIRECT)
        for question in (
            lambda rm: rm.list_conversations(ALICE, first, None),
            lambda rm: rm.list_messages(ALICE, chat, first, None),
            lambda rm: rm.search_messages(ALICE, "hello", None, first, None),
        ):
            with pytest.raises(InvalidInputError):
                ask(question)

    def test_first_may_be_1_or_100(self, story: Story, ask: Ask[Any]) -> None:
        chat = story.start(ALICE, {BOB}, DIRECT)
        with story.batch():
            for n in range(MAX_PAGE_SIZE + 1):
                story.send(chat, ALICE, f"message {n}")
        assert len(ask(lambda rm: rm.list_messages(ALICE, chat, 1, None)).items) == 1
        full = ask(lambda rm: rm.list_messages(ALICE, chat, MAX_PAGE_SIZE, None))
        assert len(full.items) == MAX_PAGE_SIZE and full.has_next_page

    @pytest.mark.parametrize("cursor", ["garbage", "", encode_message_cursor(3) + "x"])
    def test_a_garbage_cursor_is_refused_by_every_list(self, story: Story, ask: Ask[Any], cursor: str) -> None:
        chat = story.start(ALICE, {BOB}, DIRECT)
        for question in (
            lambda rm: rm.list_conversations(ALICE, 10, cursor),
            lambda rm: rm.list_messages(ALICE, chat, 10, cursor),
            lambda rm: rm.search_messages(ALICE, "hello", None, 10, cursor),
        ):
            with pytest.raises(InvalidCursorError):
                ask(question)

    def test_a_cursor_of_one_list_is_refused_by_another(self, story: Story, ask: Ask[Any]) -> None:
        story.start(ALICE, {BOB}, DIRECT)
        with pytest.raises(InvalidCursorError):
            ask(lambda rm: rm.list_conversations(ALICE, 10, encode_message_cursor(3)))

    def test_an_oversize_search_query_is_refused(self, story: Story, ask: Ask[Any]) -> None:
        with pytest.raises(InvalidInputError):
            ask(lambda rm: rm.search_messages(ALICE, "a" * (MAX_SEARCH_QUERY_CHARS + 1), None, 10, None))

    def test_a_query_without_words_finds_nothing(self, story: Story, ask: Ask[Any]) -> None:
        chat = story.start(ALICE, {BOB}, DIRECT)
        story.send(chat, ALICE, "hello")
        assert ask(lambda rm: rm.search_messages(ALICE, " !? ", None, 10, None)).items == []


# ---- presence (Redis) --------------------------------------------------------------------------------


class TestOnlineStatus:
    def test_everyone_is_offline_until_presence_is_written(self, ask: Ask[Any]) -> None:
        users = [f"user-{uuid4().hex}" for _ in range(3)]
        statuses = ask(lambda rm: rm.online_statuses(users))
        assert [(s.user_id, s.is_online, s.last_seen) for s in statuses] == [(u, False, None) for u in users]

    def test_a_user_with_a_presence_key_is_online_and_last_seen_is_read(self, redis_url: str, ask: Ask[Any]) -> None:
        online, away, iso_user = (f"user-{uuid4().hex}" for _ in range(3))
        seen_at = datetime(2031, 2, 3, 4, 5, 6, tzinfo=timezone.utc)

        async def write_presence() -> None:
            client = redis.asyncio.Redis.from_url(redis_url)
            try:
                await client.hset(queries.ONLINE_KEY.format(user_id=online), mapping={"socketId": "s1"})
                await client.set(queries.LAST_SEEN_KEY.format(user_id=online), str(int(seen_at.timestamp())))
                await client.set(queries.LAST_SEEN_KEY.format(user_id=iso_user), "2031-02-03T04:05:06Z")
            finally:
                await client.aclose()

        asyncio.run(write_presence())
        statuses = ask(lambda rm: rm.online_statuses([online, away, iso_user]))
        assert [(s.user_id, s.is_online, s.last_seen) for s in statuses] == [
            (online, True, seen_at),
            (away, False, None),
            (iso_user, False, seen_at),
        ]

    def test_an_unreadable_last_seen_reads_as_unknown(self) -> None:
        assert queries.parse_last_seen(b"yesterday-ish") is None

    def test_without_redis_everyone_is_offline(self, database_url: str) -> None:
        async def run() -> list[Any]:
            async with open_read_model(database_url, None) as read_model:
                return await read_model.online_statuses([ALICE, BOB])

        assert [(s.user_id, s.is_online) for s in asyncio.run(run())] == [(ALICE, False), (BOB, False)]

    def test_too_many_users_at_once_is_refused(self, ask: Ask[Any]) -> None:
        with pytest.raises(InvalidInputError):
            ask(lambda rm: rm.online_statuses([f"u{n}" for n in range(queries.MAX_ONLINE_STATUS_USERS + 1)]))


# ---- query plans -----------------------------------------------------------------------------------

USERS = 5000
BIG_CONVERSATIONS = 20_000
BIG_MESSAGES = 10_000
POWER_USER = "power-user"  # a shop answering many buyers: in about 1 conversation of 20
POWER_USER_SHARE = 0.05
VOCABULARY = [f"word{n}" for n in range(400)]  # each word is in ~1 message of 50: a realistic search
BIG_TABLES = {"messages", "conversations", "conversation_participants"}
PlanNode = tuple[str, str | None, str | None]  # node type, table, index


@dataclass(frozen=True)
class BigReadModel:
    database_url: str
    user: str  # a typical user, in a dozen conversations
    conversation: UUID  # one of theirs, among the busiest


def plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from plan_nodes(child)


async def _fetch(database_url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(database_url)
    try:
        return await connection.fetch(sql, *args)
    finally:
        await connection.close()


@pytest.fixture(scope="class")
def big(create_database: Callable[[], str]) -> BigReadModel:
    """Thousands of messages in thousands of conversations of thousands of users, analysed:
    enough that the planner's choices are the ones production will see, not tiny-table shortcuts."""
    database_url = create_database()
    rng = random.Random(7)
    with psycopg.connect(database_url) as connection:
        story = Story(connection)
        with story.batch():
            for _ in range(BIG_CONVERSATIONS):
                members = [f"user-{n}" for n in rng.sample(range(USERS), 3)]
                if rng.random() < POWER_USER_SHARE:
                    members[2] = POWER_USER
                story.start(members[0], set(members[1:]))
            conversations = list(story.conversations.values())
            for _ in range(BIG_MESSAGES):
                conversation = rng.choice(conversations)
                sender = rng.choice(conversation.participant_ids)
                story.send(conversation.id, sender, " ".join(rng.sample(VOCABULARY, 8)))
        connection.autocommit = True
        connection.execute("ANALYZE")
    (row,) = asyncio.run(
        _fetch(
            database_url,
            "SELECT p.user_id, p.conversation_id FROM read.conversation_participants p"
            " JOIN read.conversations c ON c.id = p.conversation_id WHERE p.user_id <> $1"
            " ORDER BY c.last_seq DESC, p.user_id LIMIT 1",
            POWER_USER,
        )
    )
    return BigReadModel(database_url, row["user_id"], row["conversation_id"])


class TestQueryPlans:
    """EXPLAIN of each hot query, with the parameters a real request sends: no sequential scan."""

    @staticmethod
    def explain(big: BigReadModel, sql: str, *args: Any) -> list[PlanNode]:
        (row,) = asyncio.run(_fetch(big.database_url, "EXPLAIN (FORMAT JSON) " + sql, *args))
        plan = json.loads(row[0])[0]["Plan"]
        return [(node["Node Type"], node.get("Relation Name"), node.get("Index Name")) for node in plan_nodes(plan)]

    @staticmethod
    def assert_no_seq_scan(nodes: list[PlanNode]) -> None:
        assert [node for node in nodes if node[0] == "Seq Scan" and node[1] in BIG_TABLES] == [], nodes
        assert {table for _, table, _ in nodes} & BIG_TABLES, nodes  # the plan did read the tables

    def test_listing_conversations_uses_indexes(self, big: BigReadModel) -> None:
        self.assert_no_seq_scan(self.explain(big, queries.LIST_CONVERSATIONS, big.user, None, None, 21))
        after = (CLOCK_START + timedelta(days=36500), UUID(int=2**128 - 1))
        self.assert_no_seq_scan(self.explain(big, queries.LIST_CONVERSATIONS, big.user, *after, 21))

    def test_fetching_the_participants_of_a_page_uses_indexes(self, big: BigReadModel) -> None:
        self.assert_no_seq_scan(self.explain(big, queries.CONVERSATION_MEMBERS, [big.conversation, uuid4()]))

    def test_listing_messages_uses_indexes(self, big: BigReadModel) -> None:
        self.assert_no_seq_scan(self.explain(big, queries.LIST_MESSAGES, big.conversation, MAX_BIGINT, 21))
        self.assert_no_seq_scan(self.explain(big, queries.LIST_MESSAGES, big.conversation, 3, 21))

    def test_fetching_a_message_uses_its_key(self, big: BigReadModel) -> None:
        self.assert_no_seq_scan(self.explain(big, queries.GET_MESSAGE, uuid4()))

    def test_searching_uses_indexes(self, big: BigReadModel) -> None:
        self.assert_no_seq_scan(self.explain(big, queries.SEARCH_MY_CONVERSATIONS, big.user, "word42", MAX_BIGINT, 21))
        self.assert_no_seq_scan(
            self.explain(big, queries.SEARCH_ONE_CONVERSATION, big.conversation, "word42", MAX_BIGINT, 21)
        )

    def test_searching_many_conversations_uses_the_full_text_index(self, big: BigReadModel) -> None:
        # For a user in a thousand conversations, finding the word first is the cheap way: the
        # query's expression must match the GIN index's exactly for the planner to take it.
        nodes = self.explain(big, queries.SEARCH_MY_CONVERSATIONS, POWER_USER, "word42", MAX_BIGINT, 21)
        self.assert_no_seq_scan(nodes)
        assert ("Bitmap Index Scan", None, "messages_search") in nodes, nodes

    def test_counting_unread_messages_uses_indexes(self, big: BigReadModel) -> None:
        self.assert_no_seq_scan(self.explain(big, queries.UNREAD_COUNT, big.user))


# ---- GraphQL on top -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine() -> Engine:
    return asyncio.run(build_engine())


@pytest.fixture
def graphql(database_url: str, redis_url: str, engine: Engine) -> Callable[..., dict[str, Any]]:
    def execute(user: str | None, query: str, **variables: Any) -> dict[str, Any]:
        async def run() -> dict[str, Any]:
            async with open_read_model(database_url, redis_url) as read_model:
                runtime = Runtime(role="all", is_development=True, cors_origin=None, read_model=read_model)
                context = {"request_context": RequestContext(runtime=runtime, user_id=user)}
                return await engine.execute(query, variables=variables, context=context)

        return asyncio.run(run())

    return execute


def error_codes(result: dict[str, Any]) -> list[str]:
    return [error["extensions"]["code"] for error in result.get("errors") or []]


class TestGraphQLQueries:
    def test_conversations_is_a_relay_connection(self, story: Story, graphql: Callable[..., dict[str, Any]]) -> None:
        first = story.start(ALICE, {BOB}, DIRECT)
        second = story.start(ALICE, {CAROL}, DIRECT)
        story.send(second, CAROL, "hi")
        query = """query($after: String) { conversations(first: 1, after: $after) {
            edges { cursor node { id type unreadCount lastMessageAt
                    lastMessage { content senderId deliveryStatus }
                    participants { userId isActive joinedAt lastReadSeq lastReadAt lastDeliveredSeq } } }
            pageInfo { hasNextPage endCursor } } }"""

        page = graphql(ALICE, query)["data"]["conversations"]
        (edge,) = page["edges"]
        assert edge["node"]["id"] == str(second) and edge["node"]["unreadCount"] == 1
        assert edge["node"]["lastMessage"] == {"content": "hi", "senderId": CAROL, "deliveryStatus": "SENT"}
        assert edge["node"]["lastMessageAt"].endswith("Z")
        assert page["pageInfo"] == {"hasNextPage": True, "endCursor": edge["cursor"]}
        rest = graphql(ALICE, query, after=page["pageInfo"]["endCursor"])["data"]["conversations"]
        assert [e["node"]["id"] for e in rest["edges"]] == [str(first)]
        assert rest["pageInfo"]["hasNextPage"] is False

    def test_messages_message_search_and_unread_count_answer(
        self, story: Story, graphql: Callable[..., dict[str, Any]]
    ) -> None:
        chat = story.start(ALICE, {BOB}, DIRECT)
        message = story.send(chat, BOB, "the lamp is sold")
        result = graphql(
            ALICE,
            """query($chat: ID!, $id: ID!) {
                conversationMessages(conversationId: $chat, first: 10) { edges { node { id seq content } } }
                message(id: $id) { id deliveryStatus }
                searchMessages(query: "lamp", first: 10) { edges { node { id } } pageInfo { hasNextPage } }
                unreadMessageCount
                conversation(id: $chat) { id participants { userId } } }""",
            chat=str(chat),
            id=str(message),
        )
        assert "errors" not in result, result
        data = result["data"]
        assert data["conversationMessages"]["edges"] == [
            {"node": {"id": str(message), "seq": 1, "content": "the lamp is sold"}}
        ]
        assert data["message"] == {"id": str(message), "deliveryStatus": "SENT"}
        assert data["searchMessages"] == {"edges": [{"node": {"id": str(message)}}], "pageInfo": {"hasNextPage": False}}
        assert data["unreadMessageCount"] == 1
        assert {p["userId"] for p in data["conversation"]["participants"]} == {ALICE, BOB}

    def test_users_online_status_lists_everyone_offline(self, graphql: Callable[..., dict[str, Any]]) -> None:
        user = f"user-{uuid4().hex}"
        query = "query($ids: [ID!]!) { usersOnlineStatus(userIds: $ids) { userId isOnline lastSeen } }"
        result = graphql(ALICE, query, ids=[user])
        assert result["data"]["usersOnlineStatus"] == [{"userId": user, "isOnline": False, "lastSeen": None}]

    def test_errors_carry_their_contract_codes(self, story: Story, graphql: Callable[..., dict[str, Any]]) -> None:
        private = story.start(CAROL, {DAVE}, DIRECT)
        conversation = "query($id: ID!) { conversation(id: $id) { id } }"
        assert error_codes(graphql(ALICE, conversation, id=str(private))) == ["FORBIDDEN"]
        assert error_codes(graphql(ALICE, conversation, id=str(uuid4()))) == ["NOT_FOUND"]
        assert error_codes(graphql(ALICE, conversation, id="not-an-id")) == ["BAD_USER_INPUT"]
        assert error_codes(graphql(None, "{ unreadMessageCount }")) == ["UNAUTHENTICATED"]
        assert error_codes(graphql(ALICE, "{ conversations(first: 101) { edges { cursor } } }")) == ["BAD_USER_INPUT"]
        assert error_codes(graphql(ALICE, '{ conversations(first: 5, after: "junk") { edges { cursor } } }')) == [
            "BAD_USER_INPUT"
        ]


class TestPresenceAudience:
    def test_presence_is_announced_in_active_conversations_up_to_the_size_limit(self, story: Story, ask: Ask[Any]) -> None:
        pair = story.start(ALICE, {BOB}, DIRECT)
        trio = story.start(ALICE, {BOB, CAROL}, title="Trip")
        story.start(CAROL, {DAVE}, DIRECT)  # not hers
        left = story.start(ALICE, {DAVE}, title="Old plans")
        story.leave(left, ALICE)

        up_to_three = ask(lambda rm: rm.presence_conversations(ALICE, 3))
        up_to_two = ask(lambda rm: rm.presence_conversations(ALICE, 2))

        assert sorted(up_to_three) == sorted([str(pair), str(trio)])
        assert up_to_two == [str(pair)]  # the group of three is above the limit
