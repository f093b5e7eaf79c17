"""The projection runner: follows the event log and keeps the read models up to date.

One thread per process (`--role all` or `--role projector`). Any number of processes may run
one; a Postgres advisory lock elects the leader, the others wait on standby and take over
within `STANDBY_POLL_S` when the leader dies (its session ends, the lock is released).
Correctness never depends on the election: every batch locks the tracking row and checks it
is where this runner expects, so two runners can never apply the same events twice.

The loop: read up to `BATCH_SIZE` events after the tracked position, fold them, and apply them
with one call of the generation's `apply_batch` (see `batch_function`): one round trip, one
transaction that advances tracking, NOTIFYs the new position (delivered on commit, which is
what read-your-writes waits for) and returns the memberships whose unread counts changed.
After the commit, publish the live frames and, in the same Redis round trip after them, write
the Redis projection; then queue the new unread counts (pushed at most every
`unread_pushes.PUSH_EVERY_S` per user, and only in parts while commits are waiting). When
caught up, it sleeps in LISTEN on the event store's channel, so a new event is projected
within milliseconds.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import psycopg

from projections.ports import EventLog
from projections import redis_batch
from projections.redis_batch import Command
from projections.postgres_projector import TrackingConflictError, apply_statement, fold, raise_conflicts
from projections.redis_counters import DerivedValues, RedisCounters, unread_keys
from projections.relay import Relay
from projections.schema import PROJECTOR_LOCK_KEY, ensure_read_model, generation_schema, live_generation
from projections.unread_pushes import UnreadPushes

log = logging.getLogger(__name__)

POSITION_CHANNEL = "loopify_projection"  # NOTIFY payload: the position the read model reached
BATCH_SIZE = 1000  # events per transaction: amortises the commit, keeps one batch ~tens of ms
IDLE_WAIT_S = 1.0  # the LISTEN wait when caught up; it only bounds how fast stop() is noticed
STANDBY_POLL_S = 2.0  # a standby retries the leader lock this often: takeover within ~2 s
RETRY_DELAY_S = 1.0  # after a database or Redis error, pause before reconnecting
ASYNC_COMMIT = "-c synchronous_commit=off"
REDIS_CATCH_UP_LIMIT = 50_000  # beyond this gap, rebuilding Redis from Postgres is cheaper
# Live frames older than this are not worth republishing after a relay outage: connected nodes
# catch up from the read model when their Redis link comes back, and clients `sync`.
RELAY_REPUBLISH_LIMIT = 10_000


@dataclass
class RunnerStatus:
    position: int = 0
    head: int = 0
    is_leader: bool = False
    redis_position: int | None = None
    batches: int = 0
    events: int = 0
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "head": self.head,
            "lag": max(0, self.head - self.position),
            "isLeader": self.is_leader,
            "redisPosition": self.redis_position,
            "batches": self.batches,
            "events": self.events,
            "lastError": self.last_error,
        }


class ProjectionRunner:
    def __init__(
        self,
        event_log: EventLog,
        database_url: str,
        counters: RedisCounters | None,
        *,
        relay: Relay | None = None,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        self.event_log = event_log
        self.database_url = database_url
        self.counters = counters
        self.relay = relay
        self.batch_size = batch_size
        self.status = RunnerStatus()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._redis_behind = False  # a refresh failed: catch up from Redis's own position
        self._next_redis_try = 0.0
        self._relay_behind = True  # until checked at start: republish what a crash left unsent
        self._unread_pushes = UnreadPushes(relay.publish_unread) if relay is not None else None
        self._generation: int | None = None  # the live generation, checked by every batch

    # ---- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="projection-runner", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.status.is_leader = False

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ---- the loop ------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._serve()
            except Exception as error:  # reconnect on any failure; never let the thread die
                self.status.is_leader = False
                self.status.last_error = f"{type(error).__name__}: {error}"
                log.exception("projection runner failed; reconnecting in %.1f s", RETRY_DELAY_S)
                self._stopping.wait(RETRY_DELAY_S)

    def _serve(self) -> None:
        # The read model is derived data whose tracking row commits with it: after a Postgres
        # crash the last batches are lost together with their position and simply projected
        # again. So its commits need not wait for the WAL flush (the event store's always do).
        with (
            psycopg.connect(self.database_url, autocommit=True) as control,
            # Autocommit: a batch is one call of `apply_batch`, its own transaction (`_project`).
            psycopg.connect(self.database_url, options=ASYNC_COMMIT, autocommit=True) as work,
        ):
            with work.transaction(), work.cursor() as cursor:
                ensure_read_model(cursor)
            if not self._become_leader(control):
                return
            control.execute(f'LISTEN "{self.event_log.log_channel}"')
            position = self._tracked_position(work)
            self._redis_behind = True  # checked (and caught up) before the first batch
            caught_up = False  # the last read was short: the next commit's NOTIFY is awaited
            while not self._stopping.is_set():
                if self._redis_behind:
                    self._retry_redis(work, position)
                if self._relay_behind and not self._redis_behind:
                    self._republish(work, position)
                # Commits during that batch (one read covers them all): a large push then goes
                # out in parts between their batches, so it never queues their frames behind it.
                commits_waiting = not caught_up or _drain(control) > 0
                push_due_in = self._push_unread(busy=commits_waiting)
                if not commits_waiting:
                    wait = IDLE_WAIT_S if push_due_in is None else min(IDLE_WAIT_S, push_due_in)
                    for _ in control.notifies(timeout=wait, stop_after=1):
                        pass
                    _drain(control)
                batch = self.event_log.read_log(position, self.batch_size)
                # Short: nothing more was committed when it was read. Commits after it NOTIFY, so
                # waiting for one costs no read that would come back empty.
                caught_up = len(batch) < self.batch_size
                self.status.head = max(self.status.head, batch[-1][0] if batch else position)
                if not batch:
                    continue
                try:
                    position = self._project(work, batch, position)
                except TrackingConflictError:
                    # Another runner (or a replay's switch) moved the position: resume from it.
                    position = self._tracked_position(work)
                    caught_up = False

    def _become_leader(self, control: psycopg.Connection[Any]) -> bool:
        while not self._stopping.is_set():
            row = control.execute("SELECT pg_try_advisory_lock(%s)", (PROJECTOR_LOCK_KEY,)).fetchone()
            if row and row[0]:
                self.status.is_leader = True
                log.info("projection runner is the leader")
                return True
            self._stopping.wait(STANDBY_POLL_S)
        return False

    def _tracked_position(self, work: psycopg.Connection[Any]) -> int:
        with work.transaction(), work.cursor() as cursor:
            generation = live_generation(cursor)
            assert generation is not None
            self._generation = generation
            cursor.execute(f'SELECT position FROM "{generation_schema(generation)}".tracking WHERE name = %s', ("postgres",))
            row = cursor.fetchone()
        self.status.position = int(row[0]) if row else 0
        return self.status.position

    def _project(self, work: psycopg.Connection[Any], batch: list[tuple[int, Any]], position: int) -> int:
        """One transaction per batch, in one round trip: `apply_batch` locks the live generation,
        applies the batch, advances tracking, NOTIFYs, and returns the memberships whose unread
        counts it may have changed, all in the transaction of its call. Read inside it, they are
        exactly what its commit makes visible. After the commit: publish the live frames, derive
        the Redis projection's values while they travel and write them behind the frames (one
        round trip), and queue the new unread counts. The rare further reads
        (edited messages for the relay, inbox rows the batch cannot give) come after the
        commit; this runner is the read model's only writer (the tracking row's lock makes it
        so), so they see the same."""
        changes = fold(batch)
        counters = self.counters if not self._redis_behind else None
        relay = self.relay if not (self._relay_behind or self._redis_behind) else None
        generation = self._generation
        assert generation is not None  # `_tracked_position` reads it before the first batch
        keys = unread_keys(changes) if counters is not None else None
        statement = apply_statement(
            generation_schema(generation), generation, changes, position, live=True, notify=POSITION_CHANNEL,
            unread=keys,
        )
        try:
            with work.cursor() as cursor:
                memberships = cursor.execute(*statement).fetchall()
        except psycopg.Error as error:
            raise_conflicts(error)  # the caller then reads the position (and generation) again
            if self._generation_replaced(work, generation):  # a replay may drop it right after
                raise TrackingConflictError(f"generation {generation} was replaced") from error
            raise
        self.status.position = changes.position
        self.status.batches += 1
        self.status.events += len(batch)
        with work.cursor() as cursor:
            changed_messages = relay.changed_messages(cursor, batch) if relay is not None else {}
            if counters is None:
                if relay is not None:
                    try:
                        relay.publish(batch, changed_messages)
                    except Exception as error:
                        self._relay_failed(error)
                return changes.position
            assert keys is not None  # computed whenever counters are
            derived: DerivedValues | None = None
            totals: dict[str, int] = {}

            def redis_writes() -> list[Command]:
                """The Redis projection's writes, derived while the live frames travel: for a
                message to a large group, an unread count per member, which its members should
                not wait for to see the message itself."""
                nonlocal derived, totals
                derived = counters.derive(cursor, changes, keys, memberships)
                writes, totals = counters.commands(derived)
                return writes

            try:
                # Live frames first, then the Redis projection, in one round trip.
                if relay is not None:
                    RedisCounters.check(relay.publish(batch, changed_messages, then=redis_writes))
                else:
                    RedisCounters.check(redis_batch.execute(counters.client, redis_writes()))
            except psycopg.Error:
                raise  # deriving read Postgres: the caller reconnects
            except Exception as error:
                # Redis down: Postgres goes on; Redis catches up later, and the relay resumes
                # from its own position once Redis is back.
                self._redis_behind = True
                self._relay_behind = True
                self.status.last_error = f"redis: {error}"
                log.warning("Redis projection refresh failed: %s", error)
                return changes.position
        self.status.redis_position = changes.position
        if self._unread_pushes is not None and relay is not None and derived is not None:
            self._unread_pushes.add(totals, derived.via)
        return changes.position

    def _generation_replaced(self, work: psycopg.Connection[Any], generation: int) -> bool:
        """After a failed batch: is another generation live now? (A replay that switched while
        this runner was idle drops the old one: its functions are gone, not merely outdated.)"""
        try:
            with work.transaction(), work.cursor() as cursor:
                return live_generation(cursor) != generation
        except psycopg.Error:
            return False  # the connection itself failed: the batch's error says why

    def _push_unread(self, *, busy: bool) -> float | None:
        """Push the unread totals whose users' intervals allow (with `busy`, commits are waiting:
        only a part, so that their frames are not queued behind it); the seconds until more
        may go."""
        if self._unread_pushes is None:
            return None
        if self._relay_behind:
            self._unread_pushes.discard()
            return None
        try:
            return self._unread_pushes.flush(busy=busy)
        except Exception as error:
            self._relay_failed(error)
            return None

    def _relay_failed(self, error: Exception) -> None:
        """Republish from the relay's own position once publishing works again."""
        self._relay_behind = True
        log.warning("live relay failed: %s", error)

    def _republish(self, work: psycopg.Connection[Any], position: int) -> None:
        """Publish what the relay missed (a crash after commit, or Redis down)."""
        if self.relay is None:
            self._relay_behind = False
            return
        try:
            after = max(self.relay.position(), position - RELAY_REPUBLISH_LIMIT)
            while after < position:
                page = [(p, e) for p, e in self.event_log.read_log(after, self.batch_size) if p <= position]
                if not page:
                    break
                with work.transaction(), work.cursor() as cursor:
                    changed_messages = Relay.changed_messages(cursor, page)
                self.relay.publish(page, changed_messages)
                after = page[-1][0]
            self._relay_behind = False
        except Exception as error:
            self.status.last_error = f"relay: {error}"
            self._stopping.wait(RETRY_DELAY_S)

    def _retry_redis(self, work: psycopg.Connection[Any], position: int) -> None:
        """Catch Redis up; if it is still unreachable, let Postgres projection go on."""
        if self.counters is None:
            self._redis_behind = False
            return
        now = time.monotonic()
        if now < self._next_redis_try:
            return
        try:
            self._catch_up_redis(work, position)
            self._redis_behind = False
        except Exception as error:
            self.status.last_error = f"redis: {error}"
            self._next_redis_try = now + RETRY_DELAY_S

    def _catch_up_redis(self, work: psycopg.Connection[Any], position: int) -> None:
        """Bring Redis to the Postgres model's position after a restart or a Redis loss."""
        if self.counters is None:
            return
        redis_position = self.counters.position()
        if redis_position is not None and redis_position >= position:
            self.status.redis_position = redis_position
            return
        with work.transaction(), work.cursor() as cursor:
            if redis_position is None or position - redis_position > REDIS_CATCH_UP_LIMIT:
                log.info("rebuilding the Redis projection from Postgres (position %s)", position)
                self.counters.rebuild(cursor, position)
            else:
                gap = []
                after = redis_position
                while after < position:
                    page = self.event_log.read_log(after, self.batch_size)
                    page = [(p, e) for p, e in page if p <= position]
                    if not page:
                        break
                    gap.extend(page)
                    after = page[-1][0]
                changes = fold(gap)
                changes.position = position
                self.counters.refresh(cursor, changes)
        self.status.redis_position = position


def _drain(control: psycopg.Connection[Any]) -> int:
    """Consume the commit notifications already received, without waiting; how many there were."""
    return sum(1 for _ in control.notifies(timeout=0))
