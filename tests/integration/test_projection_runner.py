"""The projection runner on a real Postgres and Redis: commands in, read models out, exactly once.

Every story drives the real write side (a `MessagingApplication` and its `GroupCommitWriter`),
then lets a real `ProjectionRunner` follow the log into the `read.*` views and the Redis keys.
Covered: what each kind of event leaves in the tables and keys, redelivery (the same events
twice), batch boundaries (the same log folded in batches of 1, 2, 3, 7 and all at once), two
runners at once and the standby's takeover, a runner killed in the middle of a batch, Redis lost
or unreachable.

The helpers at the top are shared with test_replay.py (the brief allows only these two files; a
`tests/integration/projections_helpers.py` would be their better home).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit
from uuid import UUID

import psycopg
import pytest
import redis
from psycopg import sql
from psycopg.rows import dict_row
from redis.backoff import NoBackoff
from redis.retry import Retry

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
from application.messaging import MessagingApplication
from projections import runner as runner_module
from projections.postgres_projector import TrackingConflictError, apply, apply_statement, fold, raise_conflicts
from projections.redis_counters import (
    POSITION_KEY,
    DerivedValues,
    RedisCounters,
    last_message_key,
    unread_by_conversation_key,
    unread_keys,
    unread_total_key,
)
from projections.runner import BATCH_SIZE, RETRY_DELAY_S, STANDBY_POLL_S, ProjectionRunner
from projections.schema import create_generation_statements, ensure_read_model, generation_schema

if TYPE_CHECKING:  # fixtures hand these in; never import a conftest at run time
    from tests.integration.conftest import Node

ALICE, BOB, CAROL, DAVE, ERIN = "alice", "bob", "carol", "dave", "erin"
USERS = (ALICE, BOB, CAROL, DAVE, ERIN)

# A few hundred events project in well under a second here; the rest is headroom for a loaded
# 2-core CI box. Only a runner that stopped projecting reaches it.
SETTLE_TIMEOUT_S = 15.0
RECONNECT_TIMEOUT_S = RETRY_DELAY_S + SETTLE_TIMEOUT_S  # a failed runner pauses, then reconnects
TAKEOVER_TIMEOUT_S = STANDBY_POLL_S + SETTLE_TIMEOUT_S  # a standby retries the lock this often
# What a healthy runner recovers within one retry pause (Postgres projected with Redis down, a
# lost Redis rebuilt); kept short so a runner that never recovers fails the test quickly.
ONE_RETRY_TIMEOUT_S = RETRY_DELAY_S + 4.0
COMMAND_TIMEOUT_S = 30.0  # far above any commit here; only a hung writer reaches it
POLL_INTERVAL_S = 0.01  # cheap status reads; keeps a wait ~10 ms longer than the effect at most
LOG_PAGE = 10_000  # events per read when a test reads the whole log
ALL_AT_ONCE = 1_000_000  # a batch size larger than any log here: one batch
LIVE_DB, REFERENCE_DB = 0, 1  # Redis databases: the projection's, and a clean rebuild's to compare
REFERENCE_GENERATION = 99  # a schema beside the live one for clean rebuilds (rm_g99)
REDIS_LINK_TIMEOUT_S = 2.0  # a cut link fails fast anyway; this only bounds a hung socket

TABLE_ORDER = {  # every table, with an order that makes two snapshots comparable row by row
    "conversations": "id",
    "conversation_participants": "conversation_id, user_id",
    "messages": "conversation_id, seq",
    "tracking": "name",
}


# ---- waiting ----------------------------------------------------------------------------------


def wait_until(condition: Callable[[], bool], what: str, timeout: float = SETTLE_TIMEOUT_S) -> None:
    """A bounded poll: return as soon as `condition()` holds, fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(POLL_INTERVAL_S)


def wait_for_projection(runner: ProjectionRunner, position: int, timeout: float = SETTLE_TIMEOUT_S) -> None:
    wait_until(lambda: runner.status.position >= position, f"the read model to reach position {position}", timeout)


def wait_for_redis(runner: ProjectionRunner, position: int, timeout: float = SETTLE_TIMEOUT_S) -> None:
    wait_until(
        lambda: (runner.status.redis_position or 0) >= position, f"Redis to reach position {position}", timeout
    )


# ---- the write side, as the stories drive it --------------------------------------------------


class Chat:
    """Commands through a node's group-commit writer; remembers the log position they reached
    and how many messages were sent."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.position = 0
        self.sent = 0

    def run(self, command: Command) -> Any:
        result = self.node.writer.execute(command, timeout=COMMAND_TIMEOUT_S)
        if result.position is not None:
            self.position = max(self.position, result.position)
        return result.value

    def start(self, actor: str, *others: str, kind: str = "GROUP", title: str | None = None) -> UUID:
        return self.run(StartConversation(actor, kind, tuple(others), title)).id  # type: ignore[no-any-return]

    def send(self, conversation_id: UUID, sender: str, content: str) -> UUID:
        message = self.run(SendMessage(sender, conversation_id, content))
        self.sent += 1
        return message.id  # type: ignore[no-any-return]

    def send_many(self, conversation_id: UUID, senders: Sequence[str], contents: Sequence[str]) -> list[UUID]:
        """Submit them all before waiting, so the writer commits them in a few group commits."""
        futures: list[Future[Any]] = [
            self.node.writer.submit(SendMessage(senders[n % len(senders)], conversation_id, content))
            for n, content in enumerate(contents)
        ]
        results = [future.result(COMMAND_TIMEOUT_S) for future in futures]
        self.position = max([self.position, *(result.position for result in results)])
        self.sent += len(results)
        return [result.value.id for result in results]

    def edit(self, sender: str, message_id: UUID, content: str) -> None:
        self.run(EditMessage(sender, message_id, content))

    def delete(self, sender: str, message_id: UUID) -> None:
        self.run(DeleteMessage(sender, message_id))

    def add(self, conversation_id: UUID, actor: str, user: str) -> None:
        self.run(AddParticipant(actor, conversation_id, user))

    def remove(self, conversation_id: UUID, actor: str, user: str) -> None:
        self.run(RemoveParticipant(actor, conversation_id, user))

    def read(self, conversation_id: UUID, reader: str, up_to_seq: int | None = None) -> None:
        self.run(MarkRead(reader, conversation_id, up_to_seq))

    def deliver(self, conversation_id: UUID, recipient: str, up_to_seq: int) -> None:
        self.run(MarkDelivered(recipient, conversation_id, up_to_seq))

    def set_typing(self, conversation_id: UUID, user: str, is_typing: bool) -> None:
        self.run(SetTyping(user, conversation_id, is_typing))


@dataclass
class Trip:
    """What the trip story created, by name."""

    group: UUID
    direct: UUID
    messages: dict[str, UUID] = field(default_factory=dict)


def tell_the_trip_story(chat: Chat) -> Trip:
    """A group and a direct chat that have been through every kind of event.

    Afterwards: group last_seq 6 (m3 deleted, m2 edited), direct last_seq 2 (d2 edited);
    unread alice 1 (group), bob 4 (group) + 1 (direct), carol 0, dave 2 (group).
    """
    # Alice starts a group with Bob and Carol; each of them says something.
    group = chat.start(ALICE, BOB, CAROL, title="Trip")
    m1 = chat.send(group, BOB, "who is driving?")
    m2 = chat.send(group, ALICE, "I can drive")
    m3 = chat.send(group, CAROL, "I lost my licence")
    # Alice changes her answer; Carol takes hers back: it keeps its place, without content.
    chat.edit(ALICE, m2, "I can drive on Sunday")
    chat.delete(CAROL, m3)
    # Dave joins late: what was said before he came is not news to him.
    chat.add(group, ALICE, DAVE)
    m4 = chat.send(group, DAVE, "count me in")
    # Bob's phone receives everything; he reads the first two.
    chat.deliver(group, BOB, 4)
    chat.read(group, BOB, 2)
    # Carol leaves, misses a message, and comes back.
    chat.remove(group, CAROL, CAROL)
    m5 = chat.send(group, ALICE, "we leave at nine")
    chat.add(group, ALICE, CAROL)
    m6 = chat.send(group, CAROL, "back, and in")
    # Bob writes to Alice directly; she answers, then rephrases. Bob starts typing.
    direct = chat.start(BOB, ALICE, kind="DIRECT")
    d1 = chat.send(direct, BOB, "psst")
    d2 = chat.send(direct, ALICE, "what?")
    chat.edit(ALICE, d2, "what is it?")
    chat.set_typing(direct, BOB, True)
    return Trip(group, direct, {"m1": m1, "m2": m2, "m3": m3, "m4": m4, "m5": m5, "m6": m6, "d1": d1, "d2": d2})


def trip_unread(trip: Trip) -> dict[str, dict[str, int]]:
    """Per user, the non-zero unread counts per conversation after the trip story."""
    return {
        ALICE: {str(trip.group): 1},
        BOB: {str(trip.group): 4, str(trip.direct): 1},
        CAROL: {},
        DAVE: {str(trip.group): 2},
    }


def tell_the_churn_story(chat: Chat, trip: Trip) -> None:
    """Membership churn and message changes packed close together, so that a batch of 7 splits
    some pairs (a send and its edit, a leave and the re-join) and keeps others together."""
    room = chat.start(ALICE, BOB, title="Churn")
    for round_ in range(3):
        # Erin is let in, says hello, is welcomed, corrects herself twice around reading, and is
        # shown out by Alice.
        chat.add(room, ALICE, ERIN)
        said = chat.send(room, ERIN, f"hello {round_}")
        chat.send(room, BOB, f"welcome {round_}")
        chat.edit(ERIN, said, f"hello again {round_}")
        chat.read(room, ERIN)
        chat.edit(ERIN, said, f"hello once more {round_}")
        chat.remove(room, ALICE, ERIN)
        # Bob says something he regrets, edits it, then deletes it; Alice receives, then reads.
        oops = chat.send(room, BOB, f"oops {round_}")
        chat.edit(BOB, oops, f"oops, sorry {round_}")
        chat.delete(BOB, oops)
        chat.deliver(room, ALICE, 3 * round_ + 2)  # three messages a round: all but the last
        chat.read(room, ALICE)
    # Long after: Dave edits, then deletes, his old group message; Bob reads the group.
    chat.edit(DAVE, trip.messages["m4"], "count me in, maybe")
    chat.delete(DAVE, trip.messages["m4"])
    chat.read(trip.group, BOB)


# ---- reading state back -----------------------------------------------------------------------


def log_events(app: MessagingApplication) -> list[tuple[int, Any]]:
    events: list[tuple[int, Any]] = []
    while page := app.read_log(events[-1][0] if events else 0, LOG_PAGE):
        events.extend(page)
    return events


def table_contents(connection: psycopg.Connection[Any], schema: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every read-model table of `schema` (a generation, or the `read` views)."""
    contents = {}
    for table, order in TABLE_ORDER.items():
        query = sql.SQL("SELECT * FROM {}.{} ORDER BY " + order).format(sql.Identifier(schema), sql.Identifier(table))
        contents[table] = [tuple(row) for row in connection.execute(query).fetchall()]
    return contents


def build_generation(database_url: str, events: list[tuple[int, Any]], generation: int, batch_size: int) -> str:
    """Fold and apply `events` into a fresh generation, `batch_size` events per transaction."""
    schema = generation_schema(generation)
    with psycopg.connect(database_url, autocommit=True) as connection:
        with connection.transaction(), connection.cursor() as cursor:
            for statement in create_generation_statements(generation):
                cursor.execute(statement)
        position = 0
        for start in range(0, len(events), batch_size):
            batch = events[start : start + batch_size]
            with connection.transaction(), connection.cursor() as cursor:
                apply(cursor, schema, fold(batch), position)
            position = batch[-1][0]
    return schema


def redis_values(client: redis.Redis) -> dict[str, Any]:
    """Every key of a Redis database and its value (hashes as dicts), decoded."""
    values: dict[str, Any] = {}
    for raw_key in client.scan_iter():
        key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
        if client.type(key) in (b"hash", "hash"):
            values[key] = {_text(k): _text(v) for k, v in client.hgetall(key).items()}
        else:
            values[key] = _text(client.get(key))
    return values


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def unread_in_redis(client: redis.Redis, user: str) -> tuple[int, dict[str, int]]:
    total = client.get(unread_total_key(user))
    per_conversation = {_text(k): int(v) for k, v in client.hgetall(unread_by_conversation_key(user)).items()}
    return (int(total) if total is not None else -1), per_conversation


def assert_redis_holds_the_trip(client: redis.Redis, trip: Trip) -> None:
    for user, expected in trip_unread(trip).items():
        assert unread_in_redis(client, user) == (sum(expected.values()), expected), user
    group_last = json.loads(client.get(last_message_key(trip.group)))
    assert (group_last["id"], group_last["content"], group_last["senderId"], group_last["seq"]) == (
        str(trip.messages["m6"]), "back, and in", CAROL, 6
    )
    direct_last = json.loads(client.get(last_message_key(trip.direct)))
    assert (direct_last["id"], direct_last["content"], direct_last["seq"]) == (str(trip.messages["d2"]), "what is it?", 2)
    assert direct_last["editedAt"] is not None and direct_last["deletedAt"] is None


def assert_redis_holds_unread_after_churn(client: redis.Redis, trip: Trip) -> None:
    # The churn story: Bob read the whole group; Erin left the room; Alice read the room.
    assert unread_in_redis(client, BOB) == (1, {str(trip.direct): 1})
    assert unread_in_redis(client, ERIN) == (0, {})


# ---- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def chat(node: Node) -> Chat:
    return Chat(node)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """The session's Redis, emptied for this test (the live projection's database)."""
    clients = [redis.Redis.from_url(redis_url, db=number) for number in (LIVE_DB, REFERENCE_DB)]
    for client in clients:
        client.flushdb()
    yield clients[0]
    for client in clients:
        client.flushdb()
        client.close()


def trip_told(chat: Chat, db: psycopg.Connection[Any]) -> tuple[Trip, list[tuple[int, Any]], int]:
    """The trip told, its events read back, and a fresh read model made (nothing applied): the
    trip, its events and the read model's generation."""
    trip = tell_the_trip_story(chat)
    events = log_events(chat.node.app)
    with db.transaction(), db.cursor() as cursor:
        generation = ensure_read_model(cursor)
    return trip, events, generation


def trip_in_postgres(chat: Chat, db: psycopg.Connection[Any]) -> tuple[Trip, list[tuple[int, Any]]]:
    """The trip told and its events applied to a fresh Postgres read model by hand."""
    trip, events, generation = trip_told(chat, db)
    with db.transaction(), db.cursor() as cursor:
        apply(cursor, generation_schema(generation), fold(events), 0)
    return trip, events


def read_recording_statements(
    db: psycopg.Connection[Any], counters: RedisCounters, events: list[tuple[int, Any]]
) -> tuple[DerivedValues, list[str]]:
    """What `counters.read` derives from `events` as one batch, and the statements it ran."""
    with db.transaction(), db.cursor() as cursor:
        recording = RecordingCursor(cursor)
        return counters.read(recording, fold(events)), recording.statements  # type: ignore[arg-type]


def last_message_reads(statements: list[str]) -> list[str]:
    return [statement for statement in statements if "last_message_id" in statement]


class RecordingCursor:
    """A cursor that notes each statement it runs (what a read asked Postgres)."""

    def __init__(self, cursor: psycopg.Cursor[Any]) -> None:
        self.cursor = cursor
        self.statements: list[str] = []

    def execute(self, query: Any, params: Any = None) -> psycopg.Cursor[Any]:
        self.statements.append(query if isinstance(query, str) else query.decode())
        return self.cursor.execute(query, params)

    def fetchall(self) -> list[Any]:
        return self.cursor.fetchall()


def started_counters(make_counters: Callable[..., RedisCounters], db: psycopg.Connection[Any]) -> RedisCounters:
    """Redis projections after a runner's first step on an empty Redis (a rebuild at 0)."""
    counters = make_counters()
    with db.transaction(), db.cursor() as cursor:
        counters.rebuild(cursor, 0)
    return counters


@pytest.fixture
def make_counters(redis_url: str, redis_client: redis.Redis) -> Iterator[Callable[..., RedisCounters]]:
    """Redis projections on their own clients, as separate processes would have."""
    clients: list[redis.Redis] = []

    def make(db: int = LIVE_DB) -> RedisCounters:
        clients.append(redis.Redis.from_url(redis_url, db=db))
        return RedisCounters(clients[-1])

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def start_runner(node: Node, database_url: str) -> Iterator[Callable[..., ProjectionRunner]]:
    """Start runners on the node's log; every one is stopped (before the node closes) at teardown."""
    runners: list[ProjectionRunner] = []

    def start(counters: RedisCounters | None, *, batch_size: int = BATCH_SIZE) -> ProjectionRunner:
        runners.append(ProjectionRunner(node.app, database_url, counters, batch_size=batch_size))
        runners[-1].start()
        return runners[-1]

    yield start
    for runner in runners:
        runner.stop(timeout=0)  # ask every runner at once; join below
    with psycopg.connect(database_url, autocommit=True) as connection:
        # Wake idle runners now rather than at the end of their LISTEN wait (IDLE_WAIT_S).
        connection.execute(sql.SQL("NOTIFY {}").format(sql.Identifier(node.app.log_channel)))
    for runner in runners:
        runner.stop()
    assert not any(runner.is_running for runner in runners), "a runner did not stop"


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection


# ---- what the runner projects ----------------------------------------------------------------


class TestTheRunnerProjectsCommands:
    @pytest.fixture
    def trip(self, chat: Chat, start_runner: Callable[..., ProjectionRunner], make_counters: Any) -> Trip:
        runner = start_runner(make_counters())
        trip = tell_the_trip_story(chat)
        wait_for_projection(runner, chat.position)
        wait_for_redis(runner, chat.position)
        return trip

    def test_conversations_have_their_type_title_and_last_message(self, trip: Trip, db: psycopg.Connection[Any]) -> None:
        rows = {
            row[0]: row[1:]
            for row in db.execute(
                "SELECT id, type, title, started_by, last_seq, last_message_id FROM read.conversations"
            ).fetchall()
        }
        assert rows == {
            trip.group: ("GROUP", "Trip", ALICE, 6, trip.messages["m6"]),
            trip.direct: ("DIRECT", None, BOB, 2, trip.messages["d2"]),
        }
        (group,) = db.execute(
            "SELECT created_at, updated_at, last_message_at, activity_at FROM read.conversations WHERE id = %s",
            (trip.group,),
        ).fetchall()
        created, updated, last_message_at, activity_at = group
        assert created < last_message_at == activity_at <= updated

    def test_participants_carry_membership_and_read_and_delivered_watermarks(
        self, trip: Trip, db: psycopg.Connection[Any]
    ) -> None:
        db.row_factory = dict_row  # type: ignore[assignment]
        rows = db.execute(
            "SELECT * FROM read.conversation_participants WHERE conversation_id = %s ORDER BY user_id", (trip.group,)
        ).fetchall()
        people = {row["user_id"]: row for row in rows}
        watermarks = {user: (row["is_active"], row["read_up_to"], row["delivered_up_to"]) for user, row in people.items()}
        assert watermarks == {
            ALICE: (True, 5, 5),  # her own message, seq 5
            BOB: (True, 2, 4),  # received up to 4, read up to 2
            CAROL: (True, 6, 6),  # back, and wrote seq 6
            DAVE: (True, 4, 4),  # joined at 3 (read on arrival), wrote seq 4
        }
        # Carol's row shows her return, not her departure; Dave's, his late arrival.
        assert people[CAROL]["left_at"] is None
        assert people[CAROL]["joined_at"] > people[ALICE]["joined_at"]
        assert people[DAVE]["joined_at"] > people[ALICE]["joined_at"]
        assert people[BOB]["last_read_at"] is not None and people[BOB]["last_delivered_at"] is not None
        deliveries = db.execute(
            "SELECT d.delivered_at IS NOT NULL AS delivered, d.read_at IS NOT NULL AS read FROM read.message_deliveries d"
            " WHERE d.message_id = %s AND d.recipient_id = %s",
            (trip.messages["m4"], BOB),
        ).fetchone()
        assert deliveries == {"delivered": True, "read": False}

    def test_edits_show_new_content_and_deletes_keep_their_place_without_content(
        self, trip: Trip, db: psycopg.Connection[Any]
    ) -> None:
        rows = db.execute(
            "SELECT seq, id, sender_id, content, edited_at IS NOT NULL, deleted_at IS NOT NULL"
            " FROM read.messages WHERE conversation_id = %s ORDER BY seq",
            (trip.group,),
        ).fetchall()
        m = trip.messages
        assert rows == [
            (1, m["m1"], BOB, "who is driving?", False, False),
            (2, m["m2"], ALICE, "I can drive on Sunday", True, False),
            (3, m["m3"], CAROL, None, False, True),
            (4, m["m4"], DAVE, "count me in", False, False),
            (5, m["m5"], ALICE, "we leave at nine", False, False),
            (6, m["m6"], CAROL, "back, and in", False, False),
        ]
        (edited_at, created_at) = db.execute(
            "SELECT edited_at, created_at FROM read.messages WHERE id = %s", (m["d2"],)
        ).fetchone()
        assert edited_at > created_at

    def test_messages_record_their_log_position_and_tracking_reaches_the_head(
        self, trip: Trip, chat: Chat, db: psycopg.Connection[Any]
    ) -> None:
        positions = [row[0] for row in db.execute("SELECT position FROM read.messages ORDER BY created_at").fetchall()]
        assert positions == sorted(positions) and len(set(positions)) == chat.sent == 8
        assert db.execute("SELECT position FROM read.tracking").fetchone() == (chat.node.app.log_head(),)

    def test_redis_holds_unread_counts_and_the_inbox_last_messages(self, trip: Trip, redis_client: redis.Redis) -> None:
        assert_redis_holds_the_trip(redis_client, trip)
        assert unread_in_redis(redis_client, ERIN) == (-1, {})  # never in a conversation: no key at all


# ---- redelivery ------------------------------------------------------------------------------


class TestRedelivery:
    def test_feeding_the_same_events_twice_leaves_the_tables_unchanged(
        self, chat: Chat, db: psycopg.Connection[Any]
    ) -> None:
        # Step 1: a log with every kind of event, projected once.
        trip, events, generation = trip_told(chat, db)
        schema = generation_schema(generation)
        with db.transaction(), db.cursor() as cursor:
            apply(cursor, schema, fold(events), 0)
        once = table_contents(db, schema)
        assert len(once["messages"]) == chat.sent and once["tracking"] == [("postgres", events[-1][0])]
        assert [row[2] for row in once["messages"] if row[1] == trip.group] == [1, 2, 3, 4, 5, 6]  # seq

        # Step 2: the same batch again (a crash after commit, before the runner noted it): refused.
        with pytest.raises(TrackingConflictError):
            with db.transaction(), db.cursor() as cursor:
                apply(cursor, schema, fold(events), 0)
        assert table_contents(db, schema) == once

        # Step 3: only the tail again, from where it once started: refused as well.
        tail = events[-5:]
        with pytest.raises(TrackingConflictError):
            with db.transaction(), db.cursor() as cursor:
                apply(cursor, schema, fold(tail), events[-6][0])
        assert table_contents(db, schema) == once

    def test_refreshing_redis_twice_from_the_same_events_leaves_the_same_keys(
        self, chat: Chat, db: psycopg.Connection[Any], make_counters: Any, redis_client: redis.Redis
    ) -> None:
        # Step 1: the trip projected into Postgres, then its Redis values refreshed once.
        trip, events = trip_in_postgres(chat, db)
        counters = started_counters(make_counters, db)
        with db.transaction(), db.cursor() as cursor:
            counters.refresh(cursor, fold(events))
        once = redis_values(redis_client)
        assert_redis_holds_the_trip(redis_client, trip)
        assert once[POSITION_KEY] == str(events[-1][0])

        # Step 2: the same events again, then a redelivered tail: nothing moves, not even the position.
        with db.transaction(), db.cursor() as cursor:
            counters.refresh(cursor, fold(events))
        assert redis_values(redis_client) == once
        with db.transaction(), db.cursor() as cursor:
            counters.refresh(cursor, fold(events[-5:]))
            counters.refresh(cursor, fold(events[:3]))  # an old, slow refresh arriving late
        assert redis_values(redis_client) == once

    def test_last_messages_sent_in_the_batch_are_not_read_back_unless_the_model_moved_on(
        self, chat: Chat, db: psycopg.Connection[Any], make_counters: Any, redis_client: redis.Redis
    ) -> None:
        trip, events = trip_in_postgres(chat, db)
        counters = started_counters(make_counters, db)

        # The whole log as one batch: every conversation's last message is the batch's own.
        derived, statements = read_recording_statements(db, counters, events)
        assert not last_message_reads(statements)
        counters.write(derived)
        assert_redis_holds_the_trip(redis_client, trip)

        # An old batch after later ones: its messages are no longer the last, so they are read.
        _, statements = read_recording_statements(db, counters, events[:4])
        assert last_message_reads(statements)

    def test_a_refresh_after_redis_forgot_its_scripts_loads_them_again_and_writes_everything(
        self, chat: Chat, db: psycopg.Connection[Any], make_counters: Any, redis_client: redis.Redis
    ) -> None:
        trip, events = trip_in_postgres(chat, db)
        counters = started_counters(make_counters, db)
        redis_client.script_flush()  # as a restarted Redis: scripts are not persisted

        with db.transaction(), db.cursor() as cursor:
            counters.refresh(cursor, fold(events))

        assert_redis_holds_the_trip(redis_client, trip)
        assert redis_values(redis_client)[POSITION_KEY] == str(events[-1][0])

# ---- batch boundaries --------------------------------------------------------------------------


class TestACaughtUpRunner:
    def test_is_woken_by_each_commit_not_by_its_idle_wait(
        self, chat: Chat, start_runner: Callable[..., ProjectionRunner], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # An idle wait far beyond the settle timeout: only the commits' NOTIFYs can wake it in time.
        monkeypatch.setattr(runner_module, "IDLE_WAIT_S", 10 * SETTLE_TIMEOUT_S)
        runner = start_runner(None)
        conversation = chat.start(ALICE, BOB, kind="DIRECT")
        wait_for_projection(runner, chat.position)

        for turn in range(3):  # each after the runner caught up and waits again
            chat.send(conversation, ALICE, f"turn {turn}")
            wait_for_projection(runner, chat.position)
        # Several commits while it may be busy with the first: one wake covers what they wrote.
        chat.send_many(conversation, [ALICE, BOB], [f"burst {n}" for n in range(20)])
        wait_for_projection(runner, chat.position)
        assert runner.status.position == runner.status.head == chat.position


class TestTheBatchFunction:
    """`apply_batch`: one call per live batch, one transaction (see `projections/batch_function.py`)."""

    def test_a_live_batch_returns_the_memberships_whose_unread_counts_it_changed(
        self, chat: Chat, db: psycopg.Connection[Any]
    ) -> None:
        trip, events, generation = trip_told(chat, db)
        changes = fold(events)
        users, conversations = unread_keys(changes)
        with db.cursor() as cursor:
            returned = cursor.execute(
                *apply_statement(
                    generation_schema(generation), generation, changes, 0, live=True, unread=(users, conversations)
                )
            ).fetchall()
            read_back = RedisCounters._read_memberships(cursor, users, conversations)
        assert sorted(returned) == sorted(read_back) != []
        assert {(user, cid) for user, cid, _, _ in returned} >= {(BOB, trip.group), (ALICE, trip.direct)}

    def test_a_live_batch_for_a_generation_no_longer_live_writes_nothing(
        self, chat: Chat, db: psycopg.Connection[Any]
    ) -> None:
        tell_the_trip_story(chat)
        events = log_events(chat.node.app)
        with db.transaction(), db.cursor() as cursor:
            live = ensure_read_model(cursor)
            for statement in create_generation_statements(REFERENCE_GENERATION):
                cursor.execute(statement)
        stale = generation_schema(REFERENCE_GENERATION)
        before = table_contents(db, stale)

        with pytest.raises(TrackingConflictError, match="no longer live"):
            with db.cursor() as cursor:
                statement = apply_statement(stale, REFERENCE_GENERATION, fold(events), 0, live=True)
                try:
                    cursor.execute(*statement)
                except psycopg.Error as error:
                    raise_conflicts(error)
        assert table_contents(db, stale) == before
        assert live != REFERENCE_GENERATION

    def test_content_that_means_something_to_json_or_sql_is_stored_as_sent(
        self, chat: Chat, db: psycopg.Connection[Any]
    ) -> None:
        contents = ['"quoted" \\ back\\slash', "'; DROP TABLE messages; --", "{}[],:%s %(x)s $$ $1", "ünï \u2028 😀"]
        conversation = chat.start(ALICE, BOB, kind="DIRECT")
        for content in contents:
            chat.send(conversation, ALICE, content)
        with db.transaction(), db.cursor() as cursor:
            schema = generation_schema(ensure_read_model(cursor))
        with db.transaction(), db.cursor() as cursor:
            apply(cursor, schema, fold(log_events(chat.node.app)), 0)
        stored = db.execute(f"SELECT content FROM {schema}.messages ORDER BY seq").fetchall()
        assert [row[0] for row in stored] == contents

    def test_a_generation_made_before_the_function_existed_gets_it_at_start(
        self, chat: Chat, db: psycopg.Connection[Any], start_runner: Callable[..., ProjectionRunner]
    ) -> None:
        with db.transaction(), db.cursor() as cursor:
            schema = generation_schema(ensure_read_model(cursor))
            cursor.execute(f"DROP FUNCTION {schema}.apply_batch")
        runner = start_runner(None)
        chat.send(chat.start(ALICE, BOB, kind="DIRECT"), ALICE, "hello")
        wait_for_projection(runner, chat.position)
        assert db.execute(f"SELECT count(*) FROM {schema}.messages").fetchone() == (1,)


class TestBatchBoundaries:
    BATCH_SIZES = (1, 2, 3, 7, ALL_AT_ONCE)

    def test_the_same_log_folded_in_batches_of_any_size_gives_the_same_tables(
        self, chat: Chat, database_url: str, db: psycopg.Connection[Any]
    ) -> None:
        # Step 1: a log of joins, leaves, re-joins, reads, sends, edits and deletes close together.
        trip = tell_the_trip_story(chat)
        tell_the_churn_story(chat, trip)
        events = log_events(chat.node.app)
        assert len(events) > 50

        # Step 2: one generation per batch size (rm_g2 ... rm_g6), each from the same events.
        contents = {
            size: table_contents(db, build_generation(database_url, events, generation, size))
            for generation, size in enumerate(self.BATCH_SIZES, start=2)
        }

        # Step 3: every generation holds exactly the same rows as the one-event-at-a-time build.
        one_by_one = contents[1]
        for size, tables in contents.items():
            for table in TABLE_ORDER:
                assert tables[table] == one_by_one[table], f"batches of {size} differ in {table}"
        # ... and those rows are the story's, not an empty or half-built model.
        assert len(one_by_one["messages"]) == chat.sent
        assert len(one_by_one["conversation_participants"]) == 4 + 2 + 3  # trip group, direct, churn room
        erin = [row for row in one_by_one["conversation_participants"] if row[1] == ERIN]
        assert [(row[2], row[4] is not None) for row in erin] == [(False, True)]  # shown out, left_at kept
        dave_m4 = [row for row in one_by_one["messages"] if row[0] == trip.messages["m4"]]
        assert [(row[5], row[10] is not None, row[11] is not None) for row in dave_m4] == [(None, True, True)]


# ---- two runners ------------------------------------------------------------------------------


class TestTwoRunners:
    def test_one_leads_each_event_is_applied_once_and_the_standby_takes_over(
        self,
        chat: Chat,
        start_runner: Callable[..., ProjectionRunner],
        make_counters: Any,
        db: psycopg.Connection[Any],
    ) -> None:
        # Step 1: two runners start together (two projector processes); one wins the election.
        first, second = start_runner(make_counters()), start_runner(make_counters())
        wait_until(lambda: first.status.is_leader or second.status.is_leader, "a leader to be elected")
        leader, standby = (first, second) if first.status.is_leader else (second, first)

        def one_leader() -> bool:
            assert not (leader.status.is_leader and standby.status.is_leader), "two leaders at once"
            return True

        # Step 2: traffic while both run; only the leader projects, each event once.
        trip = tell_the_trip_story(chat)
        chat.send_many(trip.group, [ALICE, BOB, DAVE], [f"plan {n}" for n in range(120)])
        wait_until(lambda: one_leader() and leader.status.position >= chat.position, "the leader to catch up")
        head = chat.node.app.log_head()
        assert leader.status.events == len(log_events(chat.node.app))
        assert (standby.status.events, standby.status.batches, standby.status.is_leader) == (0, 0, False)
        assert db.execute("SELECT count(*), count(DISTINCT id) FROM read.messages").fetchone() == (chat.sent, chat.sent)
        assert db.execute("SELECT position FROM read.tracking").fetchone() == (head,)

        # Step 3: the leader stops (its session ends, the lock is freed); the standby takes over.
        leader.stop()
        assert not leader.is_running
        wait_until(lambda: standby.status.is_leader, "the standby to take over", TAKEOVER_TIMEOUT_S)

        # Step 4: the new leader projects what comes next, from where the old one stopped.
        chat.send_many(trip.direct, [ALICE, BOB], [f"after the handover {n}" for n in range(30)])
        wait_for_projection(standby, chat.position)
        assert standby.status.events == len(chat.node.app.read_log(head, LOG_PAGE))
        assert db.execute("SELECT count(*), count(DISTINCT id) FROM read.messages").fetchone() == (chat.sent, chat.sent)
        assert db.execute("SELECT position FROM read.tracking").fetchone() == (chat.node.app.log_head(),)


# ---- a runner killed mid-batch ------------------------------------------------------------------


class CrashOnce:
    """Wraps `apply_statement`: on call `on_call`, the statement writes the batch (the call of
    `apply_batch` runs first), then dies in the same transaction, before it commits."""

    FAILURES = {
        "raises": b"(1 / (random() * 0)::int)::bigint",  # volatile: fails when run, not planned
        # The process is gone: Postgres sees its connection drop in the middle of the transaction.
        "connection_dies": b"pg_terminate_backend(pg_backend_pid())::int::bigint",
    }

    def __init__(self, real: Callable[..., tuple[bytes, tuple[Any, ...]]], on_call: int, how: str) -> None:
        self.real = real
        self.on_call = on_call
        self.failure = self.FAILURES[how]
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[bytes, tuple[Any, ...]]:
        self.calls += 1
        query, params = self.real(*args, **kwargs)
        if self.calls != self.on_call:
            return query, params
        # UNION ALL runs its branches in order: the batch is written, then the failure comes.
        return query + b" UNION ALL SELECT NULL, NULL, NULL, " + self.failure, params


class TestRunnerKilledMidBatch:
    SMALL_BATCH = 7  # several batches for the story, so the crash lands between committed ones
    CRASH_ON_CALL = 3

    @pytest.mark.parametrize("how", ["raises", "connection_dies"])
    def test_the_runner_reconnects_and_converges_to_a_clean_rebuild(
        self,
        how: str,
        chat: Chat,
        database_url: str,
        db: psycopg.Connection[Any],
        start_runner: Callable[..., ProjectionRunner],
        make_counters: Any,
        redis_client: redis.Redis,
        redis_url: str,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        # Step 1: a log of every kind of event, and a runner whose third batch dies before commit.
        trip = tell_the_trip_story(chat)
        tell_the_churn_story(chat, trip)
        crash = CrashOnce(runner_module.apply_statement, self.CRASH_ON_CALL, how)
        monkeypatch.setattr(runner_module, "apply_statement", crash)
        runner = start_runner(make_counters(), batch_size=self.SMALL_BATCH)

        # Step 2: it fails, pauses, reconnects and catches up.
        wait_for_projection(runner, chat.position, RECONNECT_TIMEOUT_S)
        wait_for_redis(runner, chat.position)
        assert crash.calls > self.CRASH_ON_CALL and runner.status.last_error is not None
        assert runner.status.is_leader

        # Step 3: the tables equal a clean rebuild of the same log, in one batch.
        reference = build_generation(database_url, log_events(chat.node.app), REFERENCE_GENERATION, ALL_AT_ONCE)
        assert table_contents(db, "read") == table_contents(db, reference)

        # Step 4: and Redis equals a clean rebuild from that model, in a database of its own.
        clean = make_counters(REFERENCE_DB)
        with db.transaction(), db.cursor() as cursor:
            clean.rebuild(cursor, chat.node.app.log_head())
        assert redis_values(redis_client) == redis_values(clean.client)
        assert_redis_holds_unread_after_churn(redis_client, trip)


# ---- Redis lost or unreachable ------------------------------------------------------------------


class RedisLink:
    """A unix-socket relay in front of the session's Redis that a test can cut and restore:
    Redis unreachable for a while with its data intact, as a network partition looks."""

    def __init__(self, upstream_path: str, path: str) -> None:
        self.upstream_path = upstream_path
        self.path = path
        self._listener: socket.socket | None = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()

    def restore(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.path)
        listener.listen()
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), name="redis-link", daemon=True).start()

    def cut(self) -> None:
        """Refuse new connections and drop the open ones."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.shutdown(socket.SHUT_RDWR)  # wakes the accept loop
            listener.close()
            os.unlink(self.path)
        with self._lock:
            for connection in self._connections:
                _quietly_shut(connection)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self.upstream_path)
            with self._lock:
                self._connections.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            _quietly_shut(end)


def _quietly_shut(connection: socket.socket) -> None:
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


@pytest.fixture
def redis_link(redis_url: str, redis_client: redis.Redis) -> Iterator[RedisLink]:
    directory = tempfile.mkdtemp(prefix="rl-")  # short: a unix socket path must fit in 108 bytes
    link = RedisLink(urlsplit(redis_url).path, os.path.join(directory, "redis.sock"))
    link.restore()
    yield link
    link.cut()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def linked_counters(redis_link: RedisLink) -> Iterator[RedisCounters]:
    """A Redis projection that reaches Redis through the link; no client-side retries, so a cut
    link fails each call at once instead of after the client's backoff."""
    client = redis.Redis(
        unix_socket_path=redis_link.path, retry=Retry(NoBackoff(), 0), socket_timeout=REDIS_LINK_TIMEOUT_S
    )
    yield RedisCounters(client)
    client.close()


class TestRedisLost:
    def test_a_restarted_runner_rebuilds_a_flushed_redis_from_postgres(
        self,
        chat: Chat,
        start_runner: Callable[..., ProjectionRunner],
        make_counters: Any,
        redis_client: redis.Redis,
    ) -> None:
        # Step 1: the trip, projected everywhere; then the projector stops.
        runner = start_runner(make_counters())
        trip = tell_the_trip_story(chat)
        wait_for_redis(runner, chat.position)
        before = redis_values(redis_client)
        runner.stop()

        # Step 2: Redis loses everything.
        redis_client.flushdb()
        assert redis_values(redis_client) == {}

        # Step 3: a new runner finds Redis without a position and rebuilds it from Postgres.
        restarted = start_runner(make_counters())
        wait_for_redis(restarted, chat.position)
        assert redis_values(redis_client) == before
        assert_redis_holds_the_trip(redis_client, trip)
        assert restarted.status.events == 0  # Postgres was already there: nothing re-applied

    def test_a_redis_that_comes_back_empty_under_a_running_runner_is_rebuilt(
        self,
        chat: Chat,
        start_runner: Callable[..., ProjectionRunner],
        make_counters: Any,
        redis_client: redis.Redis,
    ) -> None:
        # Step 1: the trip, projected everywhere; Dave has 2 unread in the group.
        runner = start_runner(make_counters())
        trip = tell_the_trip_story(chat)
        wait_for_redis(runner, chat.position)
        assert unread_in_redis(redis_client, DAVE) == (2, {str(trip.group): 2})

        # Step 2: Redis restarts empty (no persistence) while the runner keeps running.
        redis_client.flushdb()

        # Step 3: the next message is in the direct chat only (Alice and Bob)...
        chat.send(trip.direct, BOB, "still there?")
        wait_for_redis(runner, chat.position)

        # ... yet Dave's count, untouched by it, must come back too.
        wait_until(
            lambda: redis_client.get(unread_total_key(DAVE)) is not None,
            "Dave's unread count to be rebuilt",
            ONE_RETRY_TIMEOUT_S,
        )
        assert unread_in_redis(redis_client, DAVE) == (2, {str(trip.group): 2})
        assert unread_in_redis(redis_client, CAROL) == (0, {})

    def test_postgres_keeps_projecting_while_redis_is_unreachable_and_redis_catches_up(
        self,
        chat: Chat,
        start_runner: Callable[..., ProjectionRunner],
        linked_counters: RedisCounters,
        redis_link: RedisLink,
        redis_client: redis.Redis,
        db: psycopg.Connection[Any],
    ) -> None:
        # Step 1: the trip, projected everywhere.
        runner = start_runner(linked_counters)
        trip = tell_the_trip_story(chat)
        wait_for_redis(runner, chat.position)
        redis_position = chat.position

        # Step 2: Redis becomes unreachable; Bob reads everything, Dave writes again.
        redis_link.cut()
        chat.read(trip.group, BOB)
        chat.read(trip.direct, BOB)
        chat.send(trip.group, DAVE, "see you at nine")

        # Step 3: Postgres follows; Redis keeps its old values and the runner says why.
        wait_for_projection(runner, chat.position, RECONNECT_TIMEOUT_S)
        assert db.execute("SELECT content FROM read.messages ORDER BY position DESC LIMIT 1").fetchone() == (
            "see you at nine",
        )
        wait_until(lambda: (runner.status.last_error or "").startswith("redis:"), "the runner to report Redis")
        assert redis_client.get(POSITION_KEY) == str(redis_position).encode()
        assert_redis_holds_the_trip(redis_client, trip)

        # Step 4: Redis is back: the runner recomputes what it missed.
        redis_link.restore()
        wait_until(
            lambda: int(redis_client.get(POSITION_KEY) or 0) >= chat.position,
            "Redis to catch up",
            RECONNECT_TIMEOUT_S,
        )
        assert unread_in_redis(redis_client, ALICE) == (2, {str(trip.group): 2})
        assert unread_in_redis(redis_client, BOB) == (1, {str(trip.group): 1})
        assert unread_in_redis(redis_client, CAROL) == (1, {str(trip.group): 1})
        assert unread_in_redis(redis_client, DAVE) == (0, {})
        assert b"see you at nine" in redis_client.get(last_message_key(trip.group))

    def test_a_runner_started_while_redis_is_unreachable_still_projects_postgres(
        self,
        chat: Chat,
        start_runner: Callable[..., ProjectionRunner],
        linked_counters: RedisCounters,
        redis_link: RedisLink,
        redis_client: redis.Redis,
        db: psycopg.Connection[Any],
    ) -> None:
        # Step 1: Redis is unreachable when the projector process starts.
        redis_link.cut()
        runner = start_runner(linked_counters)

        # Step 2: traffic arrives; the Postgres read model must follow regardless.
        trip = tell_the_trip_story(chat)
        wait_for_projection(runner, chat.position, ONE_RETRY_TIMEOUT_S)
        assert db.execute("SELECT count(*) FROM read.messages").fetchone() == (chat.sent,)

        # Step 3: once Redis is back, it catches up too.
        redis_link.restore()
        wait_for_redis(runner, chat.position, RECONNECT_TIMEOUT_S)
        assert_redis_holds_the_trip(redis_client, trip)
