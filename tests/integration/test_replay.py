"""`loopify replay` on a real Postgres and Redis: rebuild the read models beside the live ones,
switch without downtime, verify.

Every story starts from a live system: a write side with a few hundred events and a running
`ProjectionRunner` that has projected them. Covered: a verified rebuild that switches and
changes no query answer, a rebuild while messages keep arriving and the live runner keeps going,
queries answering throughout, `--verify` catching a tampered live model, and the Redis rebuild.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg
import psycopg
import pytest
import redis

from domain.errors import DomainError
from projections import replay as replay_module
from projections.queries import ReadModel
from projections.redis_counters import POSITION_KEY, RedisCounters, unread_total_key
from projections.replay import Replay, ReplayProgress
from projections.runner import ProjectionRunner
from projections.views import Page

# Shared story, fixtures and helpers (see that module's docstring for why they live there).
from tests.integration.test_projection_runner import (  # noqa: F401  (fixtures are used by name)
    ALICE,
    ALL_AT_ONCE,
    BOB,
    CAROL,
    DAVE,
    ERIN,
    RECONNECT_TIMEOUT_S,
    REFERENCE_GENERATION,
    USERS,
    Chat,
    Trip,
    build_generation,
    chat,
    db,
    log_events,
    make_counters,
    redis_client,
    redis_values,
    start_runner,
    table_contents,
    tell_the_trip_story,
    wait_for_projection,
    wait_for_redis,
    wait_until,
)

CONVERSATION_PAGE = 2  # small pages: every list spans several, so cursors are compared too
MESSAGE_PAGE = 25
SEARCH_PAGE = 10
SEARCH_WORDS = ("drive", "offer", "word7", "nine")
POOL_SIZE = 2  # a client asks one question at a time; two proves nothing depends on one connection
# Build in small batches and switch late, so a few hundred events take many build transactions
# beside the live traffic (the real 5,000/5,000 would do the whole replay in the switch).
SMALL_REPLAY_BATCH = 40
SMALL_SWITCH_LAG = 40
# Both ways a rebuild reads the log: every event through the Python fold, and MessageSent rows
# by SQL in small position ranges (so a few hundred events still make several steps).
BUILD_PATHS = [None, 40]
DURING_BUILD = 5  # messages that must arrive while the build runs (and again after the switch)
REPLAY_TIMEOUT_S = 60.0  # a replay of a few hundred events takes well under a second here
PROBE_APPLICATION = "replay-probe"  # names the one reader the switch test watches in pg_stat_activity


# ---- the live system --------------------------------------------------------------------------


@dataclass
class Live:
    chat: Chat
    trip: Trip
    runner: ProjectionRunner
    conversations: list[UUID]
    sample_messages: list[UUID]


@pytest.fixture
def live(chat: Chat, start_runner: Callable[..., ProjectionRunner], make_counters: Any) -> Live:
    """The trip story plus a few hundred messages in three more conversations, all projected."""
    runner = start_runner(make_counters())
    trip = tell_the_trip_story(chat)
    shop = chat.start(CAROL, DAVE, kind="DIRECT")
    crew = chat.start(BOB, CAROL, DAVE, ERIN, title="Crew")
    sent = chat.send_many(shop, [CAROL, DAVE], [f"offer {n} word{n % 10}" for n in range(120)])
    sent += chat.send_many(crew, [BOB, CAROL, DAVE, ERIN], [f"crew note {n} word{n % 13}" for n in range(150)])
    sent += chat.send_many(trip.group, [ALICE, BOB, CAROL, DAVE], [f"trip detail {n}" for n in range(40)])
    chat.edit(CAROL, sent[2], "offer withdrawn")
    chat.delete(BOB, sent[120])
    chat.read(crew, ERIN, 100)
    chat.deliver(shop, CAROL, 120)
    chat.remove(crew, BOB, ERIN)
    wait_for_projection(runner, chat.position)
    wait_for_redis(runner, chat.position)
    samples = [*trip.messages.values(), sent[0], sent[2], sent[120], sent[-1]]
    return Live(chat, trip, runner, [trip.group, trip.direct, shop, crew], samples)


def live_generation_of(connection: psycopg.Connection[Any]) -> int:
    row = connection.execute("SELECT generation FROM loopify_read_models WHERE name = 'postgres'").fetchone()
    assert row is not None
    return int(row[0])


def generation_schemas(connection: psycopg.Connection[Any]) -> list[str]:
    rows = connection.execute("SELECT nspname FROM pg_namespace WHERE nspname ~ '^rm_g[0-9]+$' ORDER BY 1").fetchall()
    return [row[0] for row in rows]


def views_read_from(connection: psycopg.Connection[Any]) -> set[str]:
    """The generation schemas the `read` views select from."""
    rows = connection.execute(
        "SELECT DISTINCT n.nspname FROM pg_depend d"
        " JOIN pg_rewrite r ON r.oid = d.objid JOIN pg_class v ON v.oid = r.ev_class"
        " JOIN pg_namespace vn ON vn.oid = v.relnamespace"
        " JOIN pg_class t ON t.oid = d.refobjid JOIN pg_namespace n ON n.oid = t.relnamespace"
        " WHERE vn.nspname = 'read' AND n.nspname <> 'read' AND t.relkind = 'r'"
    ).fetchall()
    return {row[0] for row in rows}


# ---- asking the read model --------------------------------------------------------------------


async def open_read_model(database_url: str, application_name: str = "replay-tests") -> tuple[ReadModel, asyncpg.Pool]:
    pool = await asyncpg.create_pool(
        database_url, min_size=1, max_size=POOL_SIZE, server_settings={"application_name": application_name}
    )
    return ReadModel(pool, None), pool


async def outcome(awaitable: Awaitable[Any]) -> Any:
    """The answer, or the name of the domain error a client would get instead."""
    try:
        return await awaitable
    except DomainError as error:
        return type(error).__name__


async def all_pages(fetch: Callable[[str | None], Awaitable[Page[Any]]]) -> list[Page[Any]]:
    pages = [await fetch(None)]
    while pages[-1].has_next_page:
        pages.append(await fetch(pages[-1].end_cursor))
    return pages


async def every_answer(read_model: ReadModel, live: Live) -> dict[tuple[Any, ...], Any]:
    """Every query each user can ask of this story, every page of every list."""
    rm = read_model
    answers: dict[tuple[Any, ...], Any] = {}
    for user in USERS:
        answers[user, "conversations"] = await all_pages(lambda after: rm.list_conversations(user, CONVERSATION_PAGE, after))
        answers[user, "unread"] = await rm.unread_count(user)
        for cid in live.conversations:
            answers[user, "conversation", cid] = await outcome(rm.get_conversation(user, cid))
            answers[user, "messages", cid] = await outcome(
                all_pages(lambda after: rm.list_messages(user, cid, MESSAGE_PAGE, after))
            )
            for word in SEARCH_WORDS[:2]:
                answers[user, "search in", cid, word] = await outcome(
                    all_pages(lambda after: rm.search_messages(user, word, cid, SEARCH_PAGE, after))
                )
        for mid in live.sample_messages:
            answers[user, "message", mid] = await outcome(rm.get_message(user, mid))
        for word in SEARCH_WORDS:
            answers[user, "search", word] = await all_pages(
                lambda after: rm.search_messages(user, word, None, SEARCH_PAGE, after)
            )
    return answers


async def quick_answers(read_model: ReadModel, live: Live) -> dict[tuple[Any, ...], Any]:
    """One round of the questions a busy client asks: inbox, a conversation, a message, search.
    Every user asked is a member of the trip group, so any error is a failed query."""
    rm = read_model
    answers: dict[tuple[Any, ...], Any] = {}
    for user in (ALICE, BOB, DAVE):
        answers[user, "conversations"] = await rm.list_conversations(user, CONVERSATION_PAGE, None)
        answers[user, "messages"] = await rm.list_messages(user, live.trip.group, MESSAGE_PAGE, None)
        answers[user, "message"] = await rm.get_message(user, live.trip.messages["m2"])
        answers[user, "unread"] = await rm.unread_count(user)
        answers[user, "search"] = await rm.search_messages(user, "drive", None, SEARCH_PAGE, None)
    return answers


def ask(database_url: str, question: Callable[[ReadModel], Awaitable[Any]], application_name: str = "replay-tests") -> Any:
    """Ask on a fresh event loop and pool (pytest-asyncio is not used)."""

    async def run() -> Any:
        read_model, pool = await open_read_model(database_url, application_name)
        try:
            return await question(read_model)
        finally:
            await pool.close()

    return asyncio.run(run())


@pytest.fixture
def in_background() -> Iterator[Callable[..., Future[Any]]]:
    """Run a callable on a worker thread. At teardown, whatever has a `stop()` is stopped (also
    when the test failed half-way), then every one is waited for."""
    stoppable: list[Any] = []

    def submit(task: Callable[..., Any], *args: Any) -> Future[Any]:
        if hasattr(task, "stop"):
            stoppable.append(task)
        return pool.submit(task, *args)

    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="replay-test") as pool:
        try:
            yield submit
        finally:
            for task in stoppable:
                task.stop()


def wait_for_result(future: Future[Any], timeout: float = REPLAY_TIMEOUT_S) -> Any:
    return future.result(timeout)


# ---- a verified rebuild ------------------------------------------------------------------------


class TestVerifiedRebuild:
    def test_switches_to_the_new_generation_and_every_answer_stays_the_same(
        self, live: Live, database_url: str, db: psycopg.Connection[Any], make_counters: Any
    ) -> None:
        # Step 1: every answer of the live read model, for every user.
        before = ask(database_url, lambda rm: every_answer(rm, live))
        assert before[ALICE, "unread"] == 3 and before[ERIN, "messages", live.trip.group] == "NotParticipantError"
        assert len(before[DAVE, "messages", live.conversations[2]]) == 5  # 120 messages, pages of 25

        # Step 2: replay, verifying the rebuilt model against the live one.
        report = Replay(live.chat.node.app, database_url, make_counters()).rebuild_postgres(verify=True)
        head = live.chat.node.app.log_head()
        assert (report.switched, report.verified, report.differences) == (True, True, {})
        assert (report.generation, report.position, report.events) == (2, head, len(log_events(live.chat.node.app)))

        # Step 3: the new generation is live, the old one is gone.
        assert live_generation_of(db) == 2
        assert views_read_from(db) == {"rm_g2"}
        assert generation_schemas(db) == ["rm_g2"]

        # Step 4: nobody can tell: every answer is the same.
        after = ask(database_url, lambda rm: every_answer(rm, live))
        assert after.keys() == before.keys()
        assert [key for key in before if after[key] != before[key]] == []


# ---- a rebuild while traffic goes on ---------------------------------------------------------------


class KeepSending:
    """A client that keeps sending messages, one at a time, until told to stop."""

    def __init__(self, chat: Chat, conversation_id: UUID) -> None:
        self.chat = chat
        self.conversation_id = conversation_id
        self.sent = 0
        self._stop = threading.Event()

    def __call__(self) -> int:
        while not self._stop.is_set():
            self.chat.send(self.conversation_id, DAVE, f"live traffic {self.sent}")
            self.sent += 1
        return self.sent

    def stop(self) -> None:
        self._stop.set()


class TestRebuildWhileWriting:
    @pytest.mark.parametrize("bulk_range", BUILD_PATHS, ids=["python-fold", "sql-bulk"])
    def test_nothing_is_lost_or_duplicated_and_the_live_runner_moves_to_the_new_generation(
        self,
        live: Live,
        database_url: str,
        db: psycopg.Connection[Any],
        make_counters: Any,
        in_background: Callable[..., Future[Any]],
        monkeypatch: pytest.MonkeyPatch,
        bulk_range: int | None,
    ) -> None:
        monkeypatch.setattr(replay_module, "SWITCH_LAG", SMALL_SWITCH_LAG)
        app = live.chat.node.app

        # Step 1: a client keeps sending while the replay builds; the live runner keeps projecting.
        sender = KeepSending(live.chat, live.trip.group)
        sending = in_background(sender)
        progress: list[ReplayProgress] = []

        def note_progress(step: ReplayProgress) -> None:
            if not progress:  # the build has started: let traffic arrive during it
                start = sender.sent
                wait_until(lambda: sender.sent >= start + DURING_BUILD, "messages to arrive during the build")
            progress.append(step)

        replay = Replay(
            app, database_url, make_counters(), batch_size=SMALL_REPLAY_BATCH, bulk_range=bulk_range, on_progress=note_progress
        )
        report = replay.rebuild_postgres()
        after_switch = sender.sent
        wait_until(lambda: sender.sent >= after_switch + DURING_BUILD, "messages to arrive after the switch")
        sender.stop()
        wait_for_result(sending)

        # Step 2: the replay switched, after a build that reported its progress.
        assert report.switched and report.generation == 2
        assert len(progress) > 1 and all(step.position <= step.head for step in progress)
        assert progress[-1].events_per_s > 0 and progress[-1].eta_s is not None
        assert [step.position for step in progress] == sorted(step.position for step in progress)

        # Step 3: the live runner goes on in the new generation; each message is there once.
        wait_for_projection(live.runner, live.chat.position, RECONNECT_TIMEOUT_S)
        assert live_generation_of(db) == 2 and generation_schemas(db) == ["rm_g2"]
        assert db.execute("SELECT count(*), count(DISTINCT id) FROM rm_g2.messages").fetchone() == (
            live.chat.sent,
            live.chat.sent,
        )
        assert db.execute("SELECT position FROM read.tracking").fetchone() == (app.log_head(),)
        last = db.execute("SELECT content FROM read.messages ORDER BY position DESC LIMIT 1").fetchone()
        assert last == (f"live traffic {sender.sent - 1}",)

        # Step 4: and it equals a clean rebuild of the whole log.
        reference = build_generation(database_url, log_events(app), REFERENCE_GENERATION, ALL_AT_ONCE)
        assert table_contents(db, "read") == table_contents(db, reference)

    def test_an_idle_live_runner_follows_the_switch_without_failing(
        self, live: Live, database_url: str, db: psycopg.Connection[Any], make_counters: Any
    ) -> None:
        # Step 1: the runner is caught up and idle while a replay switches and drops its generation.
        report = Replay(live.chat.node.app, database_url, make_counters()).rebuild_postgres()
        assert report.switched and generation_schemas(db) == [f"rm_g{report.generation}"]

        # Step 2: the next message goes to the new generation, with no error on the way.
        live.chat.send(live.trip.group, ALICE, "after the switch")
        wait_for_projection(live.runner, live.chat.position)
        assert live.runner.status.last_error is None
        assert db.execute("SELECT content FROM read.messages ORDER BY position DESC LIMIT 1").fetchone() == (
            "after the switch",
        )

    def test_verify_ignores_a_message_committed_during_the_switch(
        self,
        live: Live,
        database_url: str,
        db: psycopg.Connection[Any],
        make_counters: Any,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        # Step 1: a message is committed right after the new generation caught up to the head,
        # before the live one is brought to the head for the comparison.
        real_catch_up = Replay._catch_up
        calls: list[str] = []

        def catch_up_then_a_message_arrives(
            self: Replay, cursor: Any, schema: str, position: int, stop: int
        ) -> tuple[int, int]:
            result = real_catch_up(self, cursor, schema, position, stop)
            calls.append(schema)
            if len(calls) == 1:
                live.chat.send(live.trip.group, DAVE, "sent during the switch")
            return result

        monkeypatch.setattr(Replay, "_catch_up", catch_up_then_a_message_arrives)

        # Step 2: the verified replay still switches: nothing differs at a common position.
        report = Replay(live.chat.node.app, database_url, make_counters()).rebuild_postgres(verify=True)
        assert calls == ["rm_g2", "rm_g1"]
        assert (report.switched, report.differences) == (True, {})

        # Step 3: and the message is projected, once, by the live runner.
        wait_for_projection(live.runner, live.chat.position, RECONNECT_TIMEOUT_S)
        assert db.execute("SELECT count(*) FROM read.messages WHERE content = 'sent during the switch'").fetchone() == (1,)


# ---- queries during a rebuild -------------------------------------------------------------------


class AskAgainAndAgain:
    """A client that keeps asking the same questions until told to stop; records every answer."""

    def __init__(self, database_url: str, live: Live) -> None:
        self.database_url = database_url
        self.live = live
        self.rounds: list[dict[tuple[Any, ...], Any]] = []
        self._stop = threading.Event()

    def __call__(self) -> None:
        async def run() -> None:
            read_model, pool = await open_read_model(self.database_url)
            try:
                while not self._stop.is_set():
                    self.rounds.append(await quick_answers(read_model, self.live))
            finally:
                await pool.close()

        asyncio.run(run())

    def stop(self) -> None:
        self._stop.set()


class TestQueriesDuringARebuild:
    @pytest.mark.parametrize("bulk_range", BUILD_PATHS, ids=["python-fold", "sql-bulk"])
    def test_queries_keep_answering_while_the_replay_builds_and_switches(
        self,
        live: Live,
        database_url: str,
        make_counters: Any,
        in_background: Callable[..., Future[Any]],
        monkeypatch: pytest.MonkeyPatch,
        bulk_range: int | None,
    ) -> None:
        monkeypatch.setattr(replay_module, "SWITCH_LAG", SMALL_SWITCH_LAG)
        expected = ask(database_url, lambda rm: quick_answers(rm, live))

        # Step 1: a client keeps asking, in the background, for the whole replay.
        client = AskAgainAndAgain(database_url, live)
        asking = in_background(client)
        wait_until(lambda: len(client.rounds) > 0, "the client's first answers")

        # Step 2: the replay runs; at every build step another client gets exactly the live answers.
        during_build: list[dict[tuple[Any, ...], Any]] = []

        def ask_during_the_build(_: ReplayProgress) -> None:
            during_build.append(ask(database_url, lambda rm: quick_answers(rm, live)))

        report = Replay(
            live.chat.node.app,
            database_url,
            make_counters(),
            batch_size=SMALL_REPLAY_BATCH,
            bulk_range=bulk_range,
            on_progress=ask_during_the_build,
        ).rebuild_postgres(verify=True)
        switched_at = len(client.rounds)
        wait_until(lambda: len(client.rounds) > switched_at + 1, "a round of answers begun after the switch")
        client.stop()
        wait_for_result(asking)  # re-raises the first query that failed, if any did

        # Step 3: no query failed; answers were the live ones during the build and after the switch.
        # (The answer of a query that straddles the switch's commit: see the next test.)
        assert report.switched and len(during_build) > 1
        assert [n for n, answers in enumerate(during_build) if answers != expected] == []
        after_switch = client.rounds[switched_at + 1 :]
        assert after_switch and [n for n, answers in enumerate(after_switch) if answers != expected] == []

    def test_a_query_that_waits_for_the_switch_gets_the_same_answer(
        self,
        live: Live,
        database_url: str,
        db: psycopg.Connection[Any],
        make_counters: Any,
        in_background: Callable[..., Future[Any]],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        def question(rm: ReadModel) -> Awaitable[Any]:
            return outcome(rm.list_messages(ALICE, live.trip.group, MESSAGE_PAGE, None))

        expected = ask(database_url, question)

        # Step 1: the replay repoints the views, then pauses before it commits.
        repointed, resume = threading.Event(), threading.Event()
        real_swap = replay_module._swap_views

        def swap_then_pause(conn: Any, cursor: Any, generation: int) -> None:
            real_swap(conn, cursor, generation)
            repointed.set()
            resume.wait(REPLAY_TIMEOUT_S)

        monkeypatch.setattr(replay_module, "_swap_views", swap_then_pause)
        replaying = in_background(Replay(live.chat.node.app, database_url, make_counters()).rebuild_postgres)
        assert repointed.wait(REPLAY_TIMEOUT_S), "the replay never reached the switch"

        try:
            # Step 2: Alice opens the group now: her query waits for the switch's lock on the views.
            asking = in_background(ask, database_url, question, PROBE_APPLICATION)
            # (Or it already answered, from the old generation, if a fix lets readers pass the switch.)
            wait_until(
                lambda: asking.done()
                or db.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'",
                    (PROBE_APPLICATION,),
                ).fetchone()
                == (1,),
                "the query to wait for the switch",
            )
        finally:
            # Step 3: the switch commits; she must get the answer she got before the replay.
            resume.set()
        assert wait_for_result(replaying).switched
        assert wait_for_result(asking) == expected


# ---- --verify on a tampered model -----------------------------------------------------------------


class TestVerifyFindsDifferences:
    def test_a_tampered_live_model_is_reported_and_stays_live(
        self, live: Live, database_url: str, db: psycopg.Connection[Any], make_counters: Any
    ) -> None:
        # Step 1: someone edits the live generation by hand.
        m1 = live.trip.messages["m1"]
        db.execute("UPDATE rm_g1.messages SET content = 'tampered' WHERE id = %s", (m1,))
        live_tables = table_contents(db, "rm_g1")

        # Step 2: the verified replay refuses to switch and says what differs.
        report = Replay(live.chat.node.app, database_url, make_counters()).rebuild_postgres(verify=True)
        assert (report.switched, report.verified) == (False, True)
        assert list(report.differences) == ["messages"]
        assert [(side, row[0], row[5]) for side, row in report.differences["messages"]] == [
            ("live only", m1, "tampered"),
            ("rebuilt only", m1, "who is driving?"),
        ]

        # Step 3: the live model is untouched and still live; the rebuilt one is gone.
        assert live_generation_of(db) == 1 and views_read_from(db) == {"rm_g1"}
        assert generation_schemas(db) == ["rm_g1"]
        assert table_contents(db, "rm_g1") == live_tables
        assert table_contents(db, "read") == live_tables


# ---- Redis ---------------------------------------------------------------------------------------------


class TestRedisRebuild:
    def test_rebuild_redis_restores_every_key_after_a_flush(
        self, live: Live, database_url: str, redis_client: redis.Redis, make_counters: Any
    ) -> None:
        # Step 1: Redis as the live runner left it; then Redis loses everything.
        before = redis_values(redis_client)
        assert before[POSITION_KEY] == str(live.chat.position)
        redis_client.flushdb()

        # Step 2: the replay recomputes it from the live Postgres model.
        counters: RedisCounters = make_counters()
        assert Replay(live.chat.node.app, database_url, counters).rebuild_redis() == live.chat.node.app.log_head()

        # Step 3: every key is back, with its value.
        assert redis_values(redis_client) == before
        assert redis_client.get(unread_total_key(ALICE)) == b"3"  # her last word in the trip was 3 messages ago
