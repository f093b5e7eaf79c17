"""`MessagingRecorder` on a real Postgres: the library's own recorder contract, then the message
index that rides in the same transaction as the events.

The first class runs `eventsourcing`'s reusable `ApplicationRecorderTestCase` unchanged (its
method names are the library's), set up the way the library's own Postgres tests are: a
datastore with a one-connection pool per test, and every table dropped before and after.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from eventsourcing.persistence import IntegrityError, StoredEvent
from eventsourcing.postgres import PostgresDatastore
from eventsourcing.tests import persistence as library_cases  # a module: pytest must not collect its abstract cases
from psycopg.sql import SQL, Identifier

from application.ports import IndexedMessage, MessageIdTakenError, MessageIndexChanges
from infrastructure.event_store import APPEND_LOCK_NAMESPACE, MessagingRecorder
from infrastructure.postgres_url import PostgresParams, parse_database_url

EVENTS_TABLE = "messaging_events"
INDEX_TABLE = "messaging_message_index"
SENT_TOPIC = "loopify:Conversation.MessageSent"
SUBSCRIBE_POOL_SIZE = 2  # a subscription holds one connection for LISTEN while the test inserts
WAIT_TIMEOUT_S = 10  # bounded waits for an append to reach or leave a lock wait


def connect(params: PostgresParams, *, autocommit: bool = False) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host=params.host, port=params.port, user=params.user, dbname=params.dbname, autocommit=autocommit
    )


def open_datastore(params: PostgresParams, **options: Any) -> PostgresDatastore:
    return PostgresDatastore(params.dbname, params.host, params.port, params.user, params.password, **options)


def drop_everything(params: PostgresParams) -> None:
    """What the library's `drop_tables()` does for its own tests: tables, composite types and
    functions in the public schema, so the next test's `create_table()` starts from nothing."""
    with connect(params, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
        for (table,) in tables:
            conn.execute(SQL("DROP TABLE IF EXISTS public.{} CASCADE").format(Identifier(table)))
        for type_name in ("stored_event_uuid", "stored_event_text"):
            conn.execute(SQL("DROP TYPE IF EXISTS public.{} CASCADE").format(Identifier(type_name)))
        for function in ("es_insert_events_uuid", "es_insert_events_text", f"{EVENTS_TABLE}_append"):
            conn.execute(SQL("DROP FUNCTION IF EXISTS public.{} CASCADE").format(Identifier(function)))


@pytest.fixture(scope="class")
def recorder_database(request: pytest.FixtureRequest, create_database: Callable[[], str]) -> None:
    """unittest classes can't take fixtures as arguments: hand them a database as a class attribute."""
    request.cls.postgres = parse_database_url(create_database())


@pytest.mark.usefixtures("recorder_database")
class TestMessagingRecorderKeepsTheLibraryApplicationRecorderContract(
    library_cases.ApplicationRecorderTestCase[MessagingRecorder]
):
    postgres: PostgresParams

    def setUp(self) -> None:
        super().setUp()
        drop_everything(self.postgres)
        # As the library's SetupPostgresDatastore: one connection, no overflow.
        self.datastore = open_datastore(self.postgres, pool_size=1, max_overflow=0, max_waiting=0)

    def tearDown(self) -> None:
        self.datastore.close()
        super().tearDown()
        drop_everything(self.postgres)

    def create_recorder(self) -> MessagingRecorder:
        recorder = MessagingRecorder(self.datastore, events_table_name=EVENTS_TABLE)
        recorder.create_table()
        return recorder

    def test_insert_subscribe(self) -> None:
        # The library's Postgres tests run this optional case with room for the LISTEN connection.
        self.datastore.pool.open()
        self.datastore.pool.resize(SUBSCRIBE_POOL_SIZE, SUBSCRIBE_POOL_SIZE)
        super().optional_test_insert_subscribe()


# ---- the message index --------------------------------------------------------------------


@pytest.fixture
def datastore(postgres_params: PostgresParams) -> Iterator[PostgresDatastore]:
    store = open_datastore(postgres_params)
    yield store
    store.close()


@pytest.fixture
def recorder(datastore: PostgresDatastore) -> MessagingRecorder:
    recorder = MessagingRecorder(datastore, events_table_name=EVENTS_TABLE)
    recorder.create_table()
    return recorder


def stored_event(conversation_id: UUID, version: int, topic: str = SENT_TOPIC) -> StoredEvent:
    return StoredEvent(originator_id=conversation_id, originator_version=version, topic=topic, state=b"{}")


def indexed(message_id: UUID, conversation_id: UUID, version: int, sender_id: str = "alice") -> IndexedMessage:
    return IndexedMessage(
        message_id=message_id,
        conversation_id=conversation_id,
        sender_id=sender_id,
        seq=version - 1,  # version 1 is ConversationStarted
        originator_version=version,
        client_message_id=None,
    )


def added(*messages: IndexedMessage) -> MessageIndexChanges:
    return MessageIndexChanges(added=list(messages))


def store_message(recorder: MessagingRecorder, conversation_id: UUID, message_id: UUID, version: int) -> None:
    """Store a MessageSent event with the message's index row, as a successful send does."""
    recorder.insert_events(
        [stored_event(conversation_id, version)], message_index=added(indexed(message_id, conversation_id, version))
    )


class TestTheMessageIndexTable:
    def test_it_is_created_with_the_events_table_and_named_after_it(
        self, recorder: MessagingRecorder, postgres_params: PostgresParams
    ) -> None:
        with connect(postgres_params) as conn:
            tables = {
                row[0]
                for row in conn.execute(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
                ).fetchall()
            }
        assert recorder.message_index_table == INDEX_TABLE
        assert {EVENTS_TABLE, INDEX_TABLE} <= tables

    def test_looking_up_no_ids_or_unknown_ids_finds_nothing(self, recorder: MessagingRecorder) -> None:
        assert recorder.lookup_messages([]) == {}
        assert recorder.lookup_messages([uuid4(), uuid4()]) == {}


class TestTheMessageIndexIsWrittenInTheEventsTransaction:
    def test_rows_written_with_events_are_found_with_every_fact(self, recorder: MessagingRecorder) -> None:
        conversation_id, first, second = uuid4(), uuid4(), uuid4()
        with_client_id = IndexedMessage(second, conversation_id, "bob", 2, 3, "c-7")

        recorder.insert_events(
            [
                stored_event(conversation_id, 1, "loopify:Conversation.ConversationStarted"),
                stored_event(conversation_id, 2),
                stored_event(conversation_id, 3),
            ],
            message_index=added(indexed(first, conversation_id, 2), with_client_id),
        )

        found = recorder.lookup_messages([first, second, first])
        assert found == {first: indexed(first, conversation_id, 2), second: with_client_id}

    def test_a_deletion_is_recorded_with_its_event(self, recorder: MessagingRecorder) -> None:
        conversation_id, message_id = uuid4(), uuid4()
        store_message(recorder, conversation_id, message_id, version=2)

        recorder.insert_events(
            [stored_event(conversation_id, 3, "loopify:Conversation.MessageDeleted")],
            message_index=MessageIndexChanges(deleted=[message_id]),
        )

        assert recorder.lookup_messages([message_id])[message_id].deleted is True

    def test_an_insert_whose_events_conflict_leaves_no_index_row(self, recorder: MessagingRecorder) -> None:
        # Another writer already stored version 2 of the conversation.
        conversation_id, other_conversation_id, message_id = uuid4(), uuid4(), uuid4()
        recorder.insert_events([stored_event(conversation_id, 2)])
        max_before = recorder.max_notification_id()

        # A stale writer saves its own version 2 (plus an event of another conversation) with the
        # message's index row: the version conflict fails the transaction...
        with pytest.raises(IntegrityError) as conflict:
            recorder.insert_events(
                [stored_event(other_conversation_id, 1), stored_event(conversation_id, 2)],
                message_index=added(indexed(message_id, conversation_id, 2)),
            )
        assert not isinstance(conflict.value, MessageIdTakenError)  # a version, not a message id

        # ...and none of it remains: no index row, no event of the other conversation.
        assert recorder.lookup_messages([message_id]) == {}
        assert recorder.select_events(other_conversation_id) == []
        assert recorder.max_notification_id() == max_before

    def test_an_insert_whose_index_row_conflicts_leaves_no_events(self, recorder: MessagingRecorder) -> None:
        # A message is already indexed (a retry raced with the original on another node).
        conversation_id, message_id = uuid4(), uuid4()
        store_message(recorder, conversation_id, message_id, version=2)

        # Saving it again under a new version fails on the index's primary key...
        with pytest.raises(MessageIdTakenError):
            recorder.insert_events(
                [stored_event(conversation_id, 3)], message_index=added(indexed(message_id, conversation_id, 3))
            )

        # ...and the events of that transaction are gone with it; the original row is untouched.
        assert [e.originator_version for e in recorder.select_events(conversation_id)] == [2]
        assert recorder.lookup_messages([message_id])[message_id].originator_version == 2

    def test_a_deletion_whose_events_conflict_leaves_the_message_undeleted(self, recorder: MessagingRecorder) -> None:
        conversation_id, message_id = uuid4(), uuid4()
        store_message(recorder, conversation_id, message_id, version=2)

        with pytest.raises(IntegrityError):
            recorder.insert_events(
                [stored_event(conversation_id, 2, "loopify:Conversation.MessageDeleted")],
                message_index=MessageIndexChanges(deleted=[message_id]),
            )

        assert recorder.lookup_messages([message_id])[message_id].deleted is False

    def test_a_datastore_with_database_functions_is_refused(self, postgres_params: PostgresParams) -> None:
        # That path skips `_insert_events` (the index) and the table lock (subscribers skip events).
        with open_datastore(postgres_params, enable_db_functions=True) as datastore:
            with pytest.raises(ValueError, match="POSTGRES_ENABLE_DB_FUNCTIONS"):
                MessagingRecorder(datastore, events_table_name=EVENTS_TABLE)


class TestTheAppendStatement:
    def test_states_are_stored_byte_for_byte_whatever_their_bytes(self, recorder: MessagingRecorder) -> None:
        # A cipher or a compressor makes states binary; they travel in base64 inside the JSON.
        conversation_id = uuid4()
        states = [bytes(range(256)), b"", '{"content":"caf\u00e9 \U0001f6b2 $$ %s \\\\"}'.encode()]

        recorder.insert_events(
            [StoredEvent(conversation_id, version, SENT_TOPIC, state) for version, state in enumerate(states, 1)]
        )

        assert [bytes(e.state) for e in recorder.select_events(conversation_id)] == states

    def test_positions_follow_the_order_of_the_batch(self, recorder: MessagingRecorder) -> None:
        first, second = uuid4(), uuid4()
        batch = [stored_event(second, 1), stored_event(first, 1), stored_event(second, 2)]

        positions = recorder.insert_events(batch)

        assert positions is not None and positions == sorted(positions)
        stored = {(n.originator_id, n.originator_version): n.id for n in recorder.select_notifications(0, 10)}
        assert [stored[(e.originator_id, e.originator_version)] for e in batch] == positions

    def test_a_database_made_with_the_array_version_of_the_function_ends_with_only_the_json_one(
        self, recorder: MessagingRecorder, postgres_params: PostgresParams
    ) -> None:
        with connect(postgres_params, autocommit=True) as conn:
            conn.execute(
                SQL(
                    "CREATE FUNCTION public.{}(uuid[], bigint[], text[], bytea[], uuid[], uuid[], text[],"
                    " bigint[], bigint[], text[], uuid[]) RETURNS SETOF bigint LANGUAGE sql AS 'SELECT 1::bigint'"
                ).format(Identifier(recorder.append_function_name))
            )

            recorder.create_table()  # what every start does

            signatures = conn.execute(
                "SELECT pg_get_function_identity_arguments(oid) FROM pg_proc WHERE proname = %s",
                (recorder.append_function_name,),
            ).fetchall()
        assert signatures == [("batch jsonb",)]


def waiting_appends(params: PostgresParams) -> list[str]:
    """The lock types this database's sessions wait for (an append blocked shows up here)."""
    with connect(params, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT locktype FROM pg_locks WHERE NOT granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchall()
    return [row[0] for row in rows]


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def append_behind(
    recorder: MessagingRecorder, params: PostgresParams, take_lock: Callable[[psycopg.Connection[Any]], Any], waits_on: str
) -> Sequence[int] | None:
    """Append while another transaction holds a lock (`take_lock`); check that the append waits
    for a lock of type `waits_on`, end that transaction, and return the append's positions."""
    # On leaving, the connection closes (releasing its lock) before the pool joins the append.
    with ThreadPoolExecutor(1) as pool, connect(params) as holder:
        take_lock(holder)
        append = pool.submit(recorder.insert_events, [stored_event(uuid4(), 1)])
        wait_for(lambda: waits_on in waiting_appends(params), f"the append to wait for a {waits_on} lock")
        assert not append.done()
        holder.commit()
        return append.result(WAIT_TIMEOUT_S)


class TestAppendsTakeTurns:
    """Commit order must equal notification order, so appends take turns on an advisory lock of
    the events table, not on the library's table lock, which VACUUM and ANALYZE also wait for."""

    def test_an_append_does_not_wait_for_a_vacuum_or_analyze_of_the_events_table(
        self, recorder: MessagingRecorder, postgres_params: PostgresParams
    ) -> None:
        # On leaving, the connection closes (releasing its lock) before the pool joins the append.
        with ThreadPoolExecutor(1) as pool, connect(postgres_params) as vacuum_like:
            # The lock VACUUM and ANALYZE hold while they run.
            vacuum_like.execute(SQL("LOCK TABLE {} IN SHARE UPDATE EXCLUSIVE MODE").format(Identifier(EVENTS_TABLE)))
            append = pool.submit(recorder.insert_events, [stored_event(uuid4(), 1)])
            positions = append.result(WAIT_TIMEOUT_S)  # the table lock would wait here until commit

        assert positions is not None and len(positions) == 1

    def test_an_append_waits_for_another_appends_transaction_then_follows_it(
        self, recorder: MessagingRecorder, postgres_params: PostgresParams
    ) -> None:
        first = recorder.insert_events([stored_event(uuid4(), 1)])

        def take_the_appends_lock(other_append: psycopg.Connection[Any]) -> None:
            other_append.execute(
                "SELECT pg_advisory_xact_lock(%s, %s::regclass::oid::int4)",
                (APPEND_LOCK_NAMESPACE, recorder.qualified_events_table),
            )

        second = append_behind(recorder, postgres_params, take_the_appends_lock, waits_on="advisory")

        assert first is not None and second is not None and second[0] > first[0]

    def test_an_append_still_waits_for_a_transaction_holding_the_librarys_table_lock(
        self, recorder: MessagingRecorder, postgres_params: PostgresParams
    ) -> None:
        # An append of an older function body (rolling upgrade) holds LOCK TABLE ... EXCLUSIVE;
        # this body's INSERT takes ROW EXCLUSIVE, which conflicts with it, so they still take turns.
        def take_the_librarys_table_lock(old_append: psycopg.Connection[Any]) -> None:
            old_append.execute(SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(Identifier(EVENTS_TABLE)))

        positions = append_behind(recorder, postgres_params, take_the_librarys_table_lock, waits_on="relation")

        assert positions is not None and len(positions) == 1


class TestTheConnectionPool:
    def test_one_thread_gets_the_connection_it_returned_last(self, postgres_params: PostgresParams) -> None:
        # A single writer thread then keeps one Postgres backend warm instead of waking each in turn.
        with open_datastore(postgres_params, pool_size=3) as datastore:
            recorder = MessagingRecorder(datastore, events_table_name=EVENTS_TABLE)
            with datastore.get_connection() as first, datastore.get_connection() as second:
                assert first.info.backend_pid != second.info.backend_pid  # the pool holds several

            backends = []
            for _ in range(6):
                with recorder.datastore.get_connection() as conn:
                    backends.append(conn.info.backend_pid)

        assert len(set(backends)) == 1
