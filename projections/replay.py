"""Rebuild the read models from the log without downtime (`loopify replay`).

1. Build: a new generation (`rm_gN+1`) fills from position 0 beside the live one, in large
   batches, while queries keep reading the live generation through the `read` views and the
   live runner keeps projecting into it.
2. Switch: lock the pointer row (the live runner's next batch waits), bring the new (and,
   with `--verify`, the live) generation to one fixed position and commit that, compare them
   if asked, then repoint the views and the pointer in the locking transaction. Readers move
   atomically on its commit; the live runner resumes on the new generation from its tracking.
3. Drop the old generation, then recompute the Redis projection from the new model.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from projections.ports import BulkMessageSource, EventLog
from projections.postgres_projector import ReadModelChanges, apply, apply_message_updates, copy_messages, fold
from projections.redis_counters import RedisCounters
from projections.schema import (
    POINTER_TABLE,
    POSTGRES_MODEL,
    TABLES,
    create_index_statements,
    create_table_statements,
    ensure_read_model,
    generation_schema,
    live_generation,
    point_views_statements,
)

log = logging.getLogger(__name__)

REPLAY_BATCH_SIZE = 5000  # bigger than the live runner's: throughput matters, latency does not
BULK_RANGE = 100_000  # log positions per bulk SQL statement: progress every second or so
BULK_WORKERS = 2  # one Postgres backend per core of the 2-core machines this runs on
SWITCH_LAG = 5000  # start the switch once the build is this close to the head of the log
# Below Postgres's deadlock_timeout (1 s): we give up a view lock before a reader could lose.
VIEW_LOCK_TIMEOUT_MS = 200
VIEW_SWAP_ATTEMPTS = 50
VIEW_SWAP_BACKOFF_S = 0.02
SAMPLE_DIFFERENCES = 5  # rows shown per table when --verify finds differences
VERIFIED_TABLES = ("conversations", "conversation_participants", "messages")


class _VerificationFailed(Exception):
    """Raised inside the switching transaction to roll it back."""


@dataclass
class ReplayProgress:
    position: int
    head: int
    events: int
    elapsed_s: float

    @property
    def events_per_s(self) -> float:
        return self.events / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        rate = self.events_per_s
        return (self.head - self.position) / rate if rate > 0 else None


@dataclass
class ReplayReport:
    generation: int
    position: int
    events: int
    elapsed_s: float
    switched: bool
    verified: bool = False
    differences: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def events_per_s(self) -> float:
        return self.events / self.elapsed_s if self.elapsed_s > 0 else 0.0


class Replay:
    def __init__(
        self,
        event_log: EventLog,
        database_url: str,
        counters: RedisCounters | None,
        *,
        batch_size: int = REPLAY_BATCH_SIZE,
        bulk_range: int | None = BULK_RANGE,
        on_progress: Callable[[ReplayProgress], None] | None = None,
    ) -> None:
        self.event_log = event_log
        self.database_url = database_url
        self.counters = counters
        self.batch_size = batch_size
        self.bulk_range = bulk_range  # None: decode every event in Python (no SQL bulk path)
        self.on_progress = on_progress or (lambda _: None)
        self._progress_lock = threading.Lock()
        self._bulk_done = 0

    def rebuild_postgres(self, *, verify: bool = False) -> ReplayReport:
        began = time.monotonic()
        with psycopg.connect(self.database_url) as conn:
            with conn.transaction(), conn.cursor() as cursor:
                live = ensure_read_model(cursor)
                _drop_abandoned_generations(cursor, live)  # left by a replay that was killed
                generation = _next_generation(cursor)
                for statement in create_table_statements(generation):
                    cursor.execute(statement)
            schema = generation_schema(generation)
            source = self.event_log.bulk_message_source() if self.bulk_range else None
            if source is not None:
                position, events = self._build_in_bulk(conn, generation, began, source)
            else:
                position, events = self._build(conn, generation, began)
            differences: dict[str, list[Any]] = {}
            # Two connections: `switch` holds the pointer row (the live runner's next batch
            # waits) while `conn` finishes both generations at one `stop` and COMMITS them, so
            # a query that later waits on the view swap already sees every row it may read.
            with psycopg.connect(self.database_url) as switch:
                try:
                    with switch.transaction(), switch.cursor() as switch_cursor:
                        live = live_generation(switch_cursor, lock="UPDATE")
                        assert live is not None
                        stop = self.event_log.log_head()
                        with conn.transaction(), conn.cursor() as cursor:
                            position, more = self._catch_up(cursor, schema, position, stop)
                            events += more
                            if verify:  # compare like with like: the live model at the same stop
                                live_schema = generation_schema(live)
                                self._catch_up(cursor, live_schema, _tracking(cursor, live_schema), stop)
                        if verify:
                            with conn.transaction(), conn.cursor() as cursor:
                                differences = _compare(cursor, generation_schema(live), schema)
                            if differences:
                                raise _VerificationFailed  # rolls the switch back: the live model stays
                        _swap_views(switch, switch_cursor, generation)
                        switch_cursor.execute(
                            sql.SQL("UPDATE {p} SET generation = %s, switched_at = now() WHERE name = %s").format(
                                p=sql.Identifier(POINTER_TABLE)
                            ),
                            (generation, POSTGRES_MODEL),
                        )
                except _VerificationFailed:
                    pass
            switched = not differences
            log.info("replay: switch %s at %.1f s", "done" if switched else "refused", time.monotonic() - began)
            with conn.transaction(), conn.cursor() as cursor:
                dropped = live if switched else generation
                cursor.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(generation_schema(dropped))))
        report = ReplayReport(generation, position, events, time.monotonic() - began, switched, verify, differences)
        log.info("replay built generation %s: %s events at %.0f/s", generation, events, report.events_per_s)
        return report

    def rebuild_redis(self) -> int:
        """Recompute every Redis value from the live Postgres model; returns its position."""
        if self.counters is None:
            return 0
        with psycopg.connect(self.database_url) as conn, conn.transaction(), conn.cursor() as cursor:
            generation = live_generation(cursor)
            assert generation is not None
            position = _tracking(cursor, generation_schema(generation))
            self.counters.rebuild(cursor, position)
        return position

    # ---- building ------------------------------------------------------------------------

    def _build(self, conn: psycopg.Connection[Any], generation: int, began: float) -> tuple[int, int]:
        """Stream the log into the new, not yet visible generation.

        Messages are copied batch by batch; everything else (conversations, members, watermarks,
        last messages, edits of earlier messages) is small and keeps folding in memory, to be
        written once at the end, instead of updating the same rows thousands of times.
        """
        schema = generation_schema(generation)
        position, events = 0, 0
        changes = ReadModelChanges()
        head = self.event_log.log_head()
        while head - position > SWITCH_LAG:
            batch = self.event_log.read_log(position, self.batch_size)
            if not batch:
                break
            fold(batch, into=changes)
            with conn.transaction(), conn.cursor() as cursor:
                _without_fsync(cursor)
                copy_messages(cursor, schema, changes)
            position = batch[-1][0]
            events += len(batch)
            if position >= head:
                head = self.event_log.log_head()
            self.on_progress(ReplayProgress(position, head, events, time.monotonic() - began))
        with conn.transaction(), conn.cursor() as cursor:
            for statement in create_index_statements(generation):
                cursor.execute(statement)
            apply(cursor, schema, changes, 0)  # tracking goes from 0 to `position` in one step
        return position, events

    def _build_in_bulk(
        self, conn: psycopg.Connection[Any], generation: int, began: float, source: BulkMessageSource
    ) -> tuple[int, int]:
        """The same model as `_build`, with MessageSent rows decoded by Postgres in C.

        Messages are 85% of a chat log and need no state to project: SQL copies them straight
        from the events table. Every other event still goes through the Python fold; what the
        messages imply (last message per conversation, senders' read marks, updated_at) is read
        back from the new table and merged by the fold's own rule. `--verify` and the tests
        compare the result with the live, event-by-event model.
        """
        schema = generation_schema(generation)
        head = self.event_log.log_head()
        self._bulk_done = 0
        # Postgres copies the messages in BULK_WORKERS backends while Python folds the rest.
        ranges = [(start, min(start + self.bulk_range, head)) for start in range(0, head, self.bulk_range)]
        with ThreadPoolExecutor(max_workers=BULK_WORKERS, thread_name_prefix="replay-bulk") as pool:
            copies = [
                pool.submit(self._copy_messages_in_bulk, schema, source, ranges[worker::BULK_WORKERS], head, began)
                for worker in range(BULK_WORKERS)
            ]
            changes = ReadModelChanges()
            position, events = 0, 0
            while batch := self.event_log.read_log(
                position, self.batch_size, stop=head, exclude_topic=source.message_sent_topic
            ):
                fold(batch, into=changes)
                position = batch[-1][0]
                events += len(batch)
            events += sum(copy.result() for copy in copies)
        log.info("replay: messages copied and other events folded in %.1f s", time.monotonic() - began)
        with conn.transaction(), conn.cursor() as cursor:
            # Before the secondary indexes exist (GIN above all): a rewritten row updates only the key.
            apply_message_updates(cursor, schema, changes)
        changes.message_updates.clear()  # written: `apply` below must not write them again
        search_index, *other_indexes = create_index_statements(generation)
        # The GIN index takes one backend for most of this phase; the other builds the b-trees,
        # then (with them) reads what the copied messages imply for the other tables.
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="replay-index") as pool:
            search = pool.submit(self._build_indexes, [search_index])
            implied = pool.submit(self._build_indexes_then_fetch, other_indexes, _latest_messages(schema))
            latest = implied.result()
            search.result()
        _merge_what_messages_imply(changes, latest)
        with conn.transaction(), conn.cursor() as cursor:
            changes.position = head
            apply(cursor, schema, changes, 0)
        log.info("replay: indexes built and state written at %.1f s", time.monotonic() - began)
        return head, events

    def _build_indexes(self, statements: list[sql.Composed]) -> None:
        """Several CREATE INDEX on one table may run at once (they take SHARE locks)."""
        with psycopg.connect(self.database_url) as conn, conn.transaction(), conn.cursor() as cursor:
            cursor.execute("SET LOCAL maintenance_work_mem = '256MB'")  # index builds sort in memory
            for statement in statements:
                cursor.execute(statement)

    def _build_indexes_then_fetch(self, statements: list[sql.Composed], query: sql.Composed) -> list[Any]:
        """Build the indexes, then run `query`, which may use them (they are committed)."""
        self._build_indexes(statements)
        with psycopg.connect(self.database_url) as conn, conn.cursor() as cursor:
            cursor.execute(query)
            return cursor.fetchall()

    def _copy_messages_in_bulk(
        self, schema: str, source: BulkMessageSource, ranges: list[tuple[int, int]], head: int, began: float
    ) -> int:
        copied = 0
        with psycopg.connect(self.database_url) as conn:
            for start, stop in ranges:
                with conn.transaction(), conn.cursor() as cursor:
                    _without_fsync(cursor)
                    cursor.execute(_bulk_insert_messages(schema, source), (start, stop, source.message_sent_topic))
                    copied += cursor.rowcount
                with self._progress_lock:  # workers finish ranges out of order: report the total done
                    self._bulk_done += stop - start
                    done = self._bulk_done
                    self.on_progress(ReplayProgress(done, head, done, time.monotonic() - began))
        return copied

    def _catch_up(self, cursor: psycopg.Cursor[Any], schema: str, position: int, stop: int) -> tuple[int, int]:
        """Apply the events in (`position`, `stop`] to a generation."""
        events = 0
        while position < stop:
            batch = [(p, e) for p, e in self.event_log.read_log(position, self.batch_size) if p <= stop]
            if not batch:
                break
            apply(cursor, schema, fold(batch), position)
            position = batch[-1][0]
            events += len(batch)
        return position, events


def _swap_views(conn: psycopg.Connection[Any], cursor: psycopg.Cursor[Any], generation: int) -> None:
    """Repoint the views, giving way to readers: a reader holding one view while waiting for
    another would otherwise deadlock with us, and Postgres might pick the reader as victim."""
    cursor.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{VIEW_LOCK_TIMEOUT_MS}ms")))
    for attempt in range(VIEW_SWAP_ATTEMPTS):
        try:
            with conn.transaction():  # a savepoint: a timed-out attempt undoes only itself
                for statement in point_views_statements(generation):
                    cursor.execute(statement)
            return
        except psycopg.errors.LockNotAvailable:
            time.sleep(VIEW_SWAP_BACKOFF_S * (attempt + 1))
    raise RuntimeError(f"could not switch the views in {VIEW_SWAP_ATTEMPTS} attempts; the live model is unchanged")


def _bulk_insert_messages(schema: str, source: BulkMessageSource) -> sql.Composed:
    # The library's JSON transcoder tags UUIDs and datetimes: {"_type_": ..., "_data_": "..."}.
    # jsonb_to_record parses each event once; a `j->'field'` per column from a subquery parsed
    # it once per column (the planner inlines the subquery): 3.5 times slower.
    return sql.SQL(
        "INSERT INTO {s}.messages (id, conversation_id, seq, position, sender_id, content, message_type,"
        " parent_message_id, client_message_id, created_at)"
        " SELECT (x.message_id->>'_data_')::uuid, e.originator_id, x.seq, e.notification_id,"
        " x.actor_id, x.content, x.message_type, (x.parent_message_id->>'_data_')::uuid,"
        " x.client_message_id, (x.\"timestamp\"->>'_data_')::timestamptz"
        " FROM {events} e CROSS JOIN LATERAL jsonb_to_record(convert_from(e.state, 'UTF8')::jsonb) AS x("
        "message_id jsonb, seq bigint, actor_id text, content text, message_type text,"
        " parent_message_id jsonb, client_message_id text, \"timestamp\" jsonb)"
        " WHERE e.notification_id > %s AND e.notification_id <= %s AND e.topic = %s"
    ).format(s=sql.Identifier(schema), events=sql.Identifier(source.schema, source.events_table))


def _latest_messages(schema: str) -> sql.Composed:
    """Each sender's latest message in each conversation: one hash aggregate over the table,
    then one index lookup per (conversation, sender)."""
    return sql.SQL(
        "SELECT m.conversation_id, m.sender_id, m.seq, m.id, m.created_at, m.position"
        " FROM (SELECT conversation_id, sender_id, max(seq) AS seq FROM {s}.messages GROUP BY 1, 2) AS latest"
        " JOIN {s}.messages m USING (conversation_id, seq)"  # seq is unique within a conversation
    ).format(s=sql.Identifier(schema))


def _merge_what_messages_imply(changes: ReadModelChanges, latest: list[Any]) -> None:
    """Fold the effects of the bulk-copied messages into `changes`, by the fold's own rules,
    from each sender's latest message per conversation (`_latest_messages`)."""
    tips: dict[Any, list[Any]] = {}
    for cid, sender, seq, mid, at, position in latest:
        if cid not in tips or tips[cid][0] < seq:
            tips[cid] = [seq, mid, at]  # the conversation's last message: its senders' latest
        # A sender has read and received everything up to their own message.
        ReadModelChanges._raise_mark(changes.read_marks, (cid, sender), seq, at, position)
        ReadModelChanges._raise_mark(changes.delivered_marks, (cid, sender), seq, at, position)
    for cid, (seq, mid, at) in tips.items():
        changes.tips[cid] = [seq, mid, at]
        if cid not in changes.touched or changes.touched[cid] < at:
            changes.touched[cid] = at


def _without_fsync(cursor: psycopg.Cursor[Any]) -> None:
    """A rebuild that crashes starts over, so its batches need not wait for the disk."""
    cursor.execute("SET LOCAL synchronous_commit = off")


def _generations(cursor: psycopg.Cursor[Any]) -> list[int]:
    cursor.execute("SELECT nspname FROM pg_namespace WHERE nspname ~ '^rm_g[0-9]+$'")
    return [int(row[0][4:]) for row in cursor.fetchall()]


def _drop_abandoned_generations(cursor: psycopg.Cursor[Any], live: int) -> None:
    for generation in _generations(cursor):
        if generation != live:
            cursor.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(generation_schema(generation))))


def _next_generation(cursor: psycopg.Cursor[Any]) -> int:
    return max(_generations(cursor), default=0) + 1


def _tracking(cursor: psycopg.Cursor[Any], schema: str) -> int:
    cursor.execute(sql.SQL("SELECT position FROM {}.tracking WHERE name = 'postgres'").format(sql.Identifier(schema)))
    row = cursor.fetchone()
    return int(row[0]) if row else 0


def _compare(cursor: psycopg.Cursor[Any], live: str, rebuilt: str) -> dict[str, list[Any]]:
    """Rows present in one generation and not the other, per table (a sample of each)."""
    differences: dict[str, list[Any]] = {}
    for table in VERIFIED_TABLES:
        assert table in TABLES
        found: list[Any] = []
        for side, a, b in (("live only", live, rebuilt), ("rebuilt only", rebuilt, live)):
            cursor.execute(
                sql.SQL("(SELECT * FROM {a}.{t} EXCEPT SELECT * FROM {b}.{t}) LIMIT %s").format(
                    a=sql.Identifier(a), b=sql.Identifier(b), t=sql.Identifier(table)
                ),
                (SAMPLE_DIFFERENCES,),
            )
            found.extend((side, row) for row in cursor.fetchall())
        if found:
            differences[table] = found
    return differences
