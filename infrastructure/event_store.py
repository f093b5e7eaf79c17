"""The Postgres event store: `eventsourcing`'s application recorder plus a message index.

The message index maps each message id to the facts the write side needs to authorise later
commands on it (conversation, sender, seq, deleted) and to answer retries idempotently. It is
written by the same statement as the events (`insert_events`), before the appends' lock,
so it is exactly as consistent as the log itself: a command that reads it and then commits can
be contradicted only by another commit to the same conversation, which optimistic concurrency
on the conversation's version detects.

The library's own recorder test cases run against this class
(tests/integration/test_event_store_recorder.py).
"""

from __future__ import annotations

import collections
from base64 import b64encode
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from uuid import UUID

from eventsourcing.persistence import IntegrityError, InterfaceError, Notification, OperationalError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from eventsourcing.utils import retry
import orjson
import psycopg
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb
from psycopg.sql import SQL, Identifier, Literal

from application.ports import IndexedMessage, MessageIdTakenError, MessageIndexChanges


SCHEMA_LOCK_KEY = 0x6C6F6F70_00000001  # any constant; distinct from the projector's locks
# First key of the appends' advisory lock (the second is the events table's oid). The two-key
# form's key space does not overlap the single-key form's the other locks use.
APPEND_LOCK_NAMESPACE = 0x6C6F6F70


@contextmanager
def schema_creation_lock(database_url: str) -> Iterator[None]:
    """Hold off other processes while the event store creates its tables.

    The library's table creation (events, snapshots, types, functions) is not safe to run
    concurrently: api nodes starting together on a fresh database collide in the system
    catalogue. A session advisory lock makes them take turns; later starts find everything.
    """
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK_KEY,))
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (SCHEMA_LOCK_KEY,))


# As the library's own recorder methods: a connection that died with a restarted Postgres is
# dropped by the pool and the call runs again on a fresh one (the pool does not ping each
# connection before use; that cost a round trip per call on the write path).
_reconnecting = retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)


def _append_document(stored_events: Sequence[StoredEvent], message_index: MessageIndexChanges | None) -> Jsonb:
    """One append as one JSON document (states in base64: a cipher or compressor makes them
    binary); psycopg spent ~100 µs a batch dumping the eleven arrays it replaced."""
    added = message_index.added if message_index is not None else []
    deleted = list(message_index.deleted) if message_index is not None else []
    return Jsonb(
        {
            "events": [
                (e.originator_id, e.originator_version, e.topic, b64encode(e.state).decode()) for e in stored_events
            ],
            "index": [
                (m.message_id, m.conversation_id, m.sender_id, m.seq, m.originator_version, m.client_message_id)
                for m in added
            ],
            "deleted": deleted,
        },
        dumps=orjson.dumps,
    )


class _WarmestFirst(collections.deque):  # type: ignore[type-arg]
    """psycopg_pool's idle connections, most recently returned first.

    The pool hands out with `popleft()` and takes back with `append()`: a queue, so one writer
    thread's batches went round all its connections, each a Postgres backend process woken in
    turn with cold caches. Taking back at the front hands out the connection just returned.
    (The pool also closes surplus connections with `popleft()`, so above its minimum size it
    closes a recently used one; the next burst opens it again.)"""

    def append(self, connection: Any) -> None:
        self.appendleft(connection)


def _hand_out_warmest_first(datastore: PostgresDatastore) -> None:
    pool = datastore.pool
    if type(getattr(pool, "_pool", None)) is collections.deque:  # psycopg_pool 3.x's idle list, not yet wrapped
        pool._pool = _WarmestFirst(pool._pool)


class MessagingRecorder(PostgresApplicationRecorder):
    def __init__(self, datastore: PostgresDatastore, *, events_table_name: str = "stored_events") -> None:
        if datastore.enable_db_functions:
            # The library's database-function path skips `_insert_events` (so the message index)
            # and takes no table lock (so subscribers can skip events): refuse it outright.
            raise ValueError("POSTGRES_ENABLE_DB_FUNCTIONS must stay off for the Messaging event store")
        super().__init__(datastore, events_table_name=events_table_name)
        _hand_out_warmest_first(datastore)
        self.message_index_table = events_table_name.removesuffix("_events") + "_message_index"
        # As `regclass` reads it; keys the appends' advisory lock.
        self.qualified_events_table = (
            SQL("{}.{}").format(Identifier(datastore.schema), Identifier(events_table_name)).as_string(None)
        )
        self._message_index_key = f"{self.message_index_table}_pkey"  # Postgres's name for its primary key
        table = SQL("{}.{}").format(Identifier(datastore.schema), Identifier(self.message_index_table))
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {table} ("
                " message_id uuid PRIMARY KEY,"
                " conversation_id uuid NOT NULL,"
                " sender_id text NOT NULL,"
                " seq bigint NOT NULL,"
                " originator_version bigint NOT NULL,"
                " client_message_id text,"
                " deleted boolean NOT NULL DEFAULT false)"
            ).format(table=table)
        )
        self._conversation_notifications_sql = SQL(
            "SELECT notification_id, originator_id, originator_version, topic, state FROM {events}"
            " WHERE originator_id = %s AND originator_version > %s ORDER BY originator_version LIMIT %s"
        ).format(events=SQL("{}.{}").format(Identifier(datastore.schema), Identifier(self.events_table_name)))
        # Max over the primary key (originator_id, originator_version): one index probe each.
        self._current_versions_sql = SQL(
            "SELECT v.id, (SELECT max(originator_version) FROM {events} WHERE originator_id = v.id)"
            " FROM unnest(%s::uuid[]) AS v(id)"
        ).format(events=SQL("{}.{}").format(Identifier(datastore.schema), Identifier(self.events_table_name)))
        self._select_log_sql = SQL(
            "SELECT notification_id, originator_id, originator_version, topic, state FROM {events}"
            " WHERE notification_id > %s ORDER BY notification_id LIMIT %s"
        ).format(events=SQL("{}.{}").format(Identifier(datastore.schema), Identifier(self.events_table_name)))
        self._select_log_filtered_sql = SQL(
            "SELECT notification_id, originator_id, originator_version, topic, state FROM {events}"
            " WHERE notification_id > %s AND (%s::bigint IS NULL OR notification_id <= %s)"
            " AND (%s::text IS NULL OR topic <> %s) ORDER BY notification_id LIMIT %s"
        ).format(events=SQL("{}.{}").format(Identifier(datastore.schema), Identifier(self.events_table_name)))
        # The whole append in one statement and one round trip (see `insert_events`).
        self.append_function_name = f"{self.events_table_name}_append"
        append_function = SQL("{}.{}").format(Identifier(datastore.schema), Identifier(self.append_function_name))
        # Its first version took eleven arrays; psycopg spent ~100 µs a batch dumping them.
        self.sql_create_statements.append(
            SQL(
                "DROP FUNCTION IF EXISTS {function}(uuid[], bigint[], text[], bytea[], uuid[], uuid[], text[],"
                " bigint[], bigint[], text[], uuid[])"
            ).format(function=append_function)
        )
        self.sql_create_statements.append(
            SQL(
                "CREATE OR REPLACE FUNCTION {function}(batch jsonb)"
                " RETURNS SETOF bigint LANGUAGE plpgsql AS $body$"
                " BEGIN"
                # The index first, before the appends' lock, as the library orders `_insert_events`.
                "   IF jsonb_array_length(batch->'index') > 0 THEN"
                "     INSERT INTO {index} (message_id, conversation_id, sender_id, seq, originator_version,"
                "       client_message_id)"
                "     SELECT (r->>0)::uuid, (r->>1)::uuid, r->>2, (r->>3)::bigint, (r->>4)::bigint, r->>5"
                "     FROM jsonb_array_elements(batch->'index') AS r;"
                "   END IF;"
                "   IF jsonb_array_length(batch->'deleted') > 0 THEN"
                # An array, then = ANY: a probe of the primary key per id, never a join the planner
                # might choose for a JSON set it cannot count.
                "     UPDATE {index} SET deleted = true WHERE message_id = ANY(ARRAY("
                "       SELECT jsonb_array_elements_text(batch->'deleted')::uuid));"
                "   END IF;"
                "   SET LOCAL lock_timeout = '{lock_timeout}s';"
                # Appends take turns so that commit order is notification order. Not the library's
                # LOCK TABLE ... EXCLUSIVE: that also waits for autovacuum and ANALYZE of the table
                # (one append under load took 239 ms while autovacuum worked on the table), and they for it. An advisory
                # lock keyed by the table serialises appends and nothing else; the INSERT's own
                # ROW EXCLUSIVE lock still excludes an append of an older body holding EXCLUSIVE.
                "   PERFORM pg_advisory_xact_lock({namespace}, {events_name}::regclass::oid::int4);"
                "   NOTIFY {channel};"
                "   RETURN QUERY INSERT INTO {events} (originator_id, originator_version, topic, state)"
                "     SELECT (r->>0)::uuid, (r->>1)::bigint, r->>2, decode(r->>3, 'base64')"
                "     FROM jsonb_array_elements(batch->'events') WITH ORDINALITY AS e(r, n) ORDER BY n"
                "     RETURNING notification_id;"
                " END $body$"
            ).format(
                function=append_function,
                index=table,
                events=SQL("{}.{}").format(Identifier(datastore.schema), Identifier(self.events_table_name)),
                events_name=Literal(self.qualified_events_table),
                namespace=Literal(APPEND_LOCK_NAMESPACE),
                channel=Identifier(self.channel_name),
                lock_timeout=SQL(str(int(datastore.lock_timeout))),
            )
        )
        # Rendered once: psycopg would compose the statement again on every execute.
        self._append_sql = SQL("SELECT * FROM {}(%s)").format(append_function).as_bytes(None)
        # The writer on an event loop appends on a connection of its own (`insert_events_async`).
        self._async_connection: psycopg.AsyncConnection[tuple[Any, ...]] | None = None
        self._lookup_sql = SQL(
            "SELECT message_id, conversation_id, sender_id, seq, originator_version, client_message_id,"
            " deleted FROM {table} WHERE message_id = ANY(%s)"
        ).format(table=table)

    @_reconnecting
    def insert_events(
        self,
        stored_events: Sequence[StoredEvent],
        *,
        message_index: MessageIndexChanges | None = None,
        **kwargs: Any,
    ) -> Sequence[int] | None:
        """Append events (and their message-index rows) in one autocommitted statement, handed
        over as one JSON document (states in base64: a cipher or compressor makes them binary).

        The library's path is seven statements in a psycopg pipeline (BEGIN, index insert, lock
        timeout, LOCK TABLE, NOTIFY, INSERT, COMMIT); its per-statement Python cost was most of
        the group-commit writer's CPU. The function runs the same statements in the same order
        inside the statement's own transaction, with an advisory lock per events table in
        place of the table lock (commit order still equals notification order), the same
        NOTIFY, and a conflicting version or message id still fails the whole append with an
        IntegrityError: `MessageIdTakenError` for a message id.
        """
        if not stored_events:
            return None
        try:
            with self.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as curs:
                assert conn.autocommit
                curs.execute(self._append_sql, (_append_document(stored_events, message_index),), prepare=True)
                return [row[0] for row in curs.fetchall()]
        except IntegrityError as error:
            cause = error.__cause__
            if isinstance(cause, psycopg.Error) and cause.diag.constraint_name == self._message_index_key:
                raise MessageIdTakenError(str(error)) from cause
            raise

    async def insert_events_async(
        self, stored_events: Sequence[StoredEvent], *, message_index: MessageIndexChanges | None = None
    ) -> list[int]:
        """`insert_events` for a writer on an event loop: the same statement on a connection of
        the calling loop's own, awaited. No retries: a caller that fails here decides its batch
        again through `insert_events`, which reconnects and retries."""
        if not stored_events:
            return []
        connection = await self._loop_connection()
        try:
            async with connection.cursor() as curs:
                await curs.execute(self._append_sql, (_append_document(stored_events, message_index),), prepare=True)
                return [row[0] for row in await curs.fetchall()]
        except psycopg.IntegrityError as error:  # as the library's `get_connection` translates it
            if error.diag.constraint_name == self._message_index_key:
                raise MessageIdTakenError(str(error)) from error
            raise IntegrityError(str(error)) from error
        except psycopg.Error:
            if connection.broken or connection.closed:
                self._async_connection = None
            raise

    async def _loop_connection(self) -> psycopg.AsyncConnection[tuple[Any, ...]]:
        connection = self._async_connection
        if connection is None or connection.closed:
            pool = self.datastore.pool
            kwargs = {key: value for key, value in pool.kwargs.items() if key != "row_factory"}
            # libpq waits forever by default; the pool's own wait bounds this one too.
            kwargs["connect_timeout"] = max(1, round(pool.timeout))
            connection = await psycopg.AsyncConnection.connect(pool.conninfo, autocommit=True, **kwargs)
            self._async_connection = connection
        return connection

    async def aclose_loop_connection(self) -> None:
        connection, self._async_connection = self._async_connection, None
        if connection is not None:
            await connection.close()

    @_reconnecting
    def lookup_messages(self, message_ids: Iterable[UUID]) -> dict[UUID, IndexedMessage]:
        ids = list(set(message_ids))
        if not ids:
            return {}
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self._lookup_sql, (ids,), prepare=True)
            rows = curs.fetchall()
        return {
            row["message_id"]: IndexedMessage(
                message_id=row["message_id"],
                conversation_id=row["conversation_id"],
                sender_id=row["sender_id"],
                seq=row["seq"],
                originator_version=row["originator_version"],
                client_message_id=row["client_message_id"],
                deleted=row["deleted"],
            )
            for row in rows
        }

    @_reconnecting
    def current_versions(self, aggregate_ids: Iterable[UUID]) -> dict[UUID, int]:
        """The latest stored version of each aggregate that has events."""
        ids = list(set(aggregate_ids))
        if not ids:
            return {}
        with self.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as curs:
            curs.execute(self._current_versions_sql, (ids,), prepare=True)
            return {row[0]: int(row[1]) for row in curs.fetchall() if row[1] is not None}

    @_reconnecting
    def select_log(
        self, after: int, limit: int, *, stop: int | None = None, exclude_topic: str | None = None
    ) -> list[tuple[int, Any, int, str, bytes]]:
        """(position, originator_id, version, topic, state) after `after`, as plain tuples: the
        library's select builds a dict and an object per row, a third of a replay's time."""
        with self.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as curs:
            if stop is None and exclude_topic is None:
                curs.execute(self._select_log_sql, (after, limit), prepare=True)
            else:
                curs.execute(
                    self._select_log_filtered_sql, (after, stop, stop, exclude_topic, exclude_topic, limit), prepare=True
                )
            return curs.fetchall()

    @_reconnecting
    def select_conversation_notifications(
        self, conversation_id: UUID, after_version: int = 0, limit: int = 1000
    ) -> list[Notification]:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self._conversation_notifications_sql, (conversation_id, after_version, limit), prepare=True)
            return [
                Notification(
                    id=row["notification_id"],
                    originator_id=row["originator_id"],
                    originator_version=row["originator_version"],
                    topic=row["topic"],
                    state=bytes(row["state"]),
                )
                for row in curs.fetchall()
            ]
