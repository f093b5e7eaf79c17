"""Group commit: one writer decides queued commands together and saves them in one transaction.
It runs as a task of the serving event loop (`start_on_loop`) or as a thread of its own
(`start`: the CLI, scripts and tests without a loop).

Why: `eventsourcing` takes an exclusive lock on the events table for every save, so separate
saves are serialised at roughly one per commit latency (230-480/s measured here) however many
threads call them. Sharing the transaction multiplies that by the batch size.

How: callers enqueue a command and get a future. The writer takes everything queued (up to
`MAX_BATCH_COMMANDS`), runs each command's handler in arrival order on in-memory aggregates,
and saves all resulting events (plus message-index rows) in one transaction. At low load a
batch is one command and commits at once; under load commands pile up during the previous
commit, so batches grow exactly when they help.

Guarantees kept:
- per-conversation order: one writer decides commands in arrival order, one batch at a time;
- all-or-nothing per command: handlers check every rule before triggering an event, and a
  refused command contributes nothing to the transaction;
- idempotency: a batch first assumes its sends are new and lets the message index's primary
  key refuse a resend of a committed message; then it is decided again with the index's
  answers, so the resend gets the original. Within a batch, its own overlay sees every send;
- concurrency with other processes: a version or index conflict fails the whole transaction,
  so the writer evicts the batch's aggregates and re-runs each command alone, reloading and
  retrying on conflict up to `MAX_CONFLICT_RETRIES` times.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import random
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from eventsourcing.persistence import IntegrityError

from application.commands import Command
from application.errors import ConcurrencyConflictError, WriterStoppedError
from application.handlers import HANDLERS, new_message_ids, referenced_message_ids
from application.messaging import SNAPSHOT_INTERVAL, MessagingApplication
from application.ports import MessageIdTakenError
from application.results import CommandResult
from application.unit_of_work import AggregateCache, NeedsStoreError, Outcome, PollutedAggregateError, UnitOfWork
from domain.errors import DomainError

log = logging.getLogger(__name__)

# Bounds one transaction's size and the latency of its last command. Each command makes at most
# one event; psycopg 3.3's pipeline stalled here on single saves of ~1,500+ events, so stay well below.
MAX_BATCH_COMMANDS = 500
# On the event loop a batch is decided in one go (the thread writer's CPU was 0.19-0.20 ms a
# command), and the loop serves no socket meanwhile: a smaller bound keeps that near 20 ms
# (an estimate). Only a backlog reaches it.
MAX_LOOP_BATCH_COMMANDS = 100
# A hot conversation written by several nodes: the other node may commit every few ms, so a
# reloaded aggregate can be stale again by the time it is saved. Exponential, jittered backoff
# lets the loser slip between the winner's commits; 30 tries span several seconds.
MAX_CONFLICT_RETRIES = 30
# After a conflict, other nodes are writing our conversations: for this long, each batch first
# checks its cached aggregates against the store (one query) and reloads the stale ones, instead
# of deciding on stale state and re-running every command alone after the save fails. A node
# that never sees a conflict never pays for the check.
FRESHNESS_CHECK_S = 60.0
CONFLICT_BACKOFF_S = 0.002  # first wait; doubles per attempt up to the cap
CONFLICT_BACKOFF_CAP_S = 0.25


@dataclass
class _Pending:
    command: Command
    # An asyncio future when submitted from an event loop (settled on that loop, once per batch),
    # a concurrent one from a plain thread.
    future: asyncio.Future[CommandResult[Any]] | Future[CommandResult[Any]]


@dataclass
class WriterStats:
    batches: int = 0
    commands: int = 0
    events: int = 0
    conflicts: int = 0
    stale_reloads: int = 0  # cached conversations another node had changed, reloaded before deciding
    resends: int = 0  # batches decided again because a send repeated a committed message
    largest_batch: int = 0

    def as_dict(self) -> dict[str, float]:
        mean = self.commands / self.batches if self.batches else 0.0
        return {
            "batches": self.batches,
            "commands": self.commands,
            "events": self.events,
            "conflicts": self.conflicts,
            "staleReloads": self.stale_reloads,
            "resends": self.resends,
            "largestBatch": self.largest_batch,
            "meanBatch": round(mean, 2),
        }


class GroupCommitWriter:
    def __init__(
        self,
        app: MessagingApplication,
        *,
        max_batch: int = MAX_BATCH_COMMANDS,
        cache: AggregateCache | None = None,
    ) -> None:
        self.app = app
        self.max_batch = max_batch
        self.cache = cache or AggregateCache()
        self.stats = WriterStats()
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._running = False
        self._check_freshness_until = 0.0  # see FRESHNESS_CHECK_S
        # Outcomes of this batch's asyncio futures, handed to their loop in one call at its end.
        self._settlements: list[tuple[asyncio.Future[CommandResult[Any]], bool, Any]] = []
        # Loop mode (`start_on_loop`): the writer is a task of the serving event loop.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inbox: collections.deque[_Pending] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    # ---- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        if self._running:
            return
        self._running = True
        self._thread = threading.Thread(target=self._run, name="group-commit-writer", daemon=True)
        self._thread.start()

    async def start_on_loop(self) -> None:
        """Run the writer as a task of the running event loop instead of a thread of its own.

        Why: a writer thread shares the process's GIL with the event loop, so each waits for the
        other: the writer, back from Postgres, until the loop lets the GIL go (up to the 5 ms
        switch interval); the loop's callbacks while the writer runs Python. On the loop there is
        no such hand-over: a batch is decided between two callbacks and its append is awaited.
        (At 1,200 msg/s a thread's append that Postgres ran in 0.25 ms took 6-9 ms on the
        writer's clock; on the loop the await still took 7.5 ms, a busy loop and busy cores being
        most of it. The bench, not that timer, showed the gain: docs/performance.md.)

        Conversations not cached (and, for a while after a conflict, those another node
        changed) are loaded on a worker thread first. A batch that needs more of the store to
        decide (a message to look up, a resend, a conflict to sort out) is decided on a worker
        thread by the same code as in thread mode; one batch is in flight at a time either way,
        so order is kept."""
        if self._running:
            return
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._running = True
        self._task = asyncio.create_task(self._run_on_loop(), name="group-commit-writer")

    async def stop_on_loop(self) -> None:
        """Finish what is queued, then stop (loop mode)."""
        if not self._running or self._task is None:
            return
        self._running = False
        assert self._wakeup is not None
        self._wakeup.set()
        await self._task

    def stop(self, timeout: float = 10.0) -> None:
        """Finish what is queued, then stop. In loop mode, from another thread: waits for
        `stop_on_loop` on the writer's loop; on that loop, await `stop_on_loop` instead."""
        if not self._running:
            return
        if self._loop is not None:
            if _running_loop() is self._loop:
                raise RuntimeError("the writer runs on this loop: await stop_on_loop() instead")
            asyncio.run_coroutine_threadsafe(self.stop_on_loop(), self._loop).result(timeout)
            return
        self._running = False
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def is_running(self) -> bool:
        if self._task is not None:
            return self._running and not self._task.done()
        return self._running and self._thread is not None and self._thread.is_alive()

    def queue_depth(self) -> int:
        return self._queue.qsize() + len(self._inbox)

    # ---- submitting ----------------------------------------------------------------------

    def submit(self, command: Command) -> Future[CommandResult[Any]]:
        """From a plain thread: a concurrent future."""
        future: Future[CommandResult[Any]] = Future()
        if not self._running:
            future.set_exception(WriterStoppedError("the writer is not running"))
            return future
        self._enqueue_from_anywhere(_Pending(command, future))
        return future

    def submit_async(self, command: Command) -> asyncio.Future[CommandResult[Any]]:
        """From an event loop: an asyncio future of that loop. The writer settles a batch's
        futures with one `call_soon_threadsafe`; wrapping concurrent futures cost a lock, a
        condition and a thread-safe call per command, a fifth of the loop at 550 msg/s."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[CommandResult[Any]] = loop.create_future()
        if not self._running:
            future.set_exception(WriterStoppedError("the writer is not running"))
            return future
        if loop is self._loop:
            self._enqueue(_Pending(command, future))
        else:
            self._enqueue_from_anywhere(_Pending(command, future))
        return future

    def _enqueue_from_anywhere(self, pending: _Pending) -> None:
        if self._loop is None:
            self._queue.put(pending)
        else:
            try:
                self._loop.call_soon_threadsafe(self._enqueue, pending)
            except RuntimeError:  # the writer's loop is closed
                _settle_one(pending.future, False, WriterStoppedError("the writer is not running"))

    def _enqueue(self, pending: _Pending) -> None:
        """Loop mode, on the writer's loop."""
        if not self._running:
            _settle_one(pending.future, False, WriterStoppedError("the writer is not running"))
            return
        self._inbox.append(pending)
        assert self._wakeup is not None
        self._wakeup.set()

    def execute(self, command: Command, timeout: float | None = 30.0) -> CommandResult[Any]:
        """Blocking submit, for threads (the CLI, tests, benchmarks)."""
        if self._loop is not None and _running_loop() is self._loop:
            raise RuntimeError("the writer runs on this loop: await submit_async() instead")
        return self.submit(command).result(timeout)

    # ---- the writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            if item is None:
                stopping = True
                batch: list[_Pending] = []
            else:
                batch = [item]
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    continue
                batch.append(item)
            if batch:
                self._process(batch)
                self._hand_over_settlements()

    # ---- the writer on the event loop (loop mode) --------------------------------------------

    async def _run_on_loop(self) -> None:
        assert self._wakeup is not None
        while True:
            if not self._inbox:
                if not self._running:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            size = min(len(self._inbox), self.max_batch, MAX_LOOP_BATCH_COMMANDS)
            batch = [self._inbox.popleft() for _ in range(size)]
            try:
                await self._process_on_loop(batch)
            finally:
                self._hand_over_settlements()

    async def _process_on_loop(self, batch: list[_Pending]) -> None:
        """Decide on the loop and await the append; anything that needs the store to decide, or
        any failure of the append, goes to the thread-mode path on a worker thread, which knows
        how to look up, reload, retry and fail."""
        if time.monotonic() < self._check_freshness_until or self._has_uncached(batch):
            await asyncio.to_thread(self._load_for, batch)
        try:
            uow, decided, refused = self._decide(batch, sends_assumed_new=True, offline=True)
        except Exception:  # NeedsStoreError, and whatever the thread path knows how to report
            await asyncio.to_thread(self._process, batch)
            return
        try:
            positions = await self._save_async(uow)
        except Exception as error:
            # Nothing was written. Resends, conflicts and an unreachable database are the thread
            # path's to sort out, deciding again from the store: forget what this attempt decided.
            self.cache.evict(uow.touched)
            if isinstance(error, IntegrityError) and not isinstance(error, MessageIdTakenError):
                await asyncio.to_thread(self._after_conflict, batch, error)  # another node: the freshness check
            else:  # a resend (rare: its append fails once more there), the database unreachable...
                await asyncio.to_thread(self._process, batch)
            return
        snapshots = self._after_save(uow)
        self._settle_batch(batch, decided, refused, positions)
        if snapshots:
            self._hand_over_settlements()  # the callers need not wait for a cache's write
            await asyncio.to_thread(self._put_snapshots, snapshots)

    def _has_uncached(self, batch: list[_Pending]) -> bool:
        return any(
            (conversation_id := _conversation_of(p.command)) is not None and self.cache.get(conversation_id) is None
            for p in batch
        )

    def _load_for(self, batch: list[_Pending]) -> None:
        """On a worker thread, before the loop decides: bring the batch's conversations into the
        cache from the store, reloading those another node changed (for a while after a
        conflict), so that one trip off the loop serves the whole batch."""
        if time.monotonic() < self._check_freshness_until:
            self._evict_stale(batch)
        for conversation_id in {_conversation_of(p.command) for p in batch} - {None}:
            if self.cache.get(conversation_id) is None:
                conversation = self.app.find_conversation(conversation_id)
                if conversation is not None:  # else deciding fails the command, on the thread path
                    self.cache.put(conversation)

    async def _save_async(self, uow: UnitOfWork) -> dict[int, int]:
        if not uow.events:
            return {}
        return self._saved(uow, await self.app.append_async(uow.events, **_append_options(uow)))

    # ---- deciding and saving (both modes) ---------------------------------------------------

    def _process(self, batch: list[_Pending]) -> None:
        try:
            try:
                self._commit(batch, sends_assumed_new=True)
            except MessageIdTakenError:
                # A client resent a message an earlier batch committed (its ack was lost): decide
                # the batch again, asking the index this time, so the resend gets the original.
                self.stats.resends += 1
                self._commit(batch)
        except (IntegrityError, PollutedAggregateError) as error:
            self._after_conflict(batch, error)
        except Exception as error:  # the database is down, a bug...: fail this batch only
            log.exception("batch of %d failed", len(batch))
            for pending in batch:
                self._fail(pending, error)

    def _after_conflict(self, batch: list[_Pending], error: Exception) -> None:
        """Another node changed one of the batch's conversations: check freshness for a while,
        and re-run each command alone."""
        self.stats.conflicts += 1
        self._check_freshness_until = time.monotonic() + FRESHNESS_CHECK_S
        log.info("batch of %d hit %s; re-running each command alone", len(batch), type(error).__name__)
        for pending in batch:
            self._commit_alone(pending)

    def _commit_alone(self, pending: _Pending) -> None:
        for attempt in range(MAX_CONFLICT_RETRIES):
            try:
                self._commit([pending])
                return
            except (IntegrityError, PollutedAggregateError):
                self.stats.conflicts += 1
                self.cache.evict([_conversation_of(pending.command)])
                time.sleep(min(CONFLICT_BACKOFF_CAP_S, CONFLICT_BACKOFF_S * 2**attempt) * random.random())
            except Exception as error:
                self._fail(pending, error)
                return
        self._fail(pending, ConcurrencyConflictError("the conversation kept changing; try again"))

    def _commit(self, batch: list[_Pending], *, sends_assumed_new: bool = False) -> None:
        """Decide every command of the batch, then save all their events in one transaction.

        `sends_assumed_new` skips asking the index about the batch's own new message ids (a
        round trip per batch, a fifth of the writer's time): a resend then fails the append
        with `MessageIdTakenError`, and the caller decides the batch again without it."""
        if time.monotonic() < self._check_freshness_until:
            self._evict_stale(batch)
        uow, decided, refused = self._decide(batch, sends_assumed_new=sends_assumed_new)
        try:
            positions = self._save(uow)
        except BaseException:
            # The in-memory aggregates may now hold unsaved changes: forget them.
            self.cache.evict(uow.touched)
            raise
        # Stored before the callers hear back: a thread's caller is answered at once.
        self._put_snapshots(self._after_save(uow))
        self._settle_batch(batch, decided, refused, positions)

    def _decide(
        self, batch: list[_Pending], *, sends_assumed_new: bool, offline: bool = False
    ) -> tuple[UnitOfWork, list[tuple[_Pending, Outcome]], list[tuple[_Pending, DomainError]]]:
        """Run each command's handler in order. `offline`: only on what is in memory, raising
        `NeedsStoreError` at the first read the store would have to answer."""
        commands = [p.command for p in batch]
        new_ids, referenced = new_message_ids(commands), referenced_message_ids(commands)
        prefetch = referenced if sends_assumed_new else referenced | new_ids
        if prefetch and offline:
            raise NeedsStoreError("the batch refers to messages the index must be asked about")
        known = self.app.lookup_messages(prefetch) if prefetch else {}
        uow = UnitOfWork(self.app, self.cache, known, looked_up=prefetch | new_ids, offline=offline)
        decided: list[tuple[_Pending, Outcome]] = []
        refused: list[tuple[_Pending, DomainError]] = []
        try:
            for pending in batch:
                uow.begin_command()
                try:
                    outcome = HANDLERS[type(pending.command)](pending.command, uow)
                except DomainError as error:
                    uow.abandon_command()
                    refused.append((pending, error))
                    continue
                outcome.events.extend(uow.end_command())
                decided.append((pending, outcome))
        except BaseException:
            # The in-memory aggregates may now hold undecided changes: forget them.
            self.cache.evict(uow.touched)
            raise
        return uow, decided, refused

    def _settle_batch(
        self,
        batch: list[_Pending],
        decided: list[tuple[_Pending, Outcome]],
        refused: list[tuple[_Pending, DomainError]],
        positions: dict[int, int],
    ) -> None:
        """After the commit: count the batch and settle every caller."""
        self.stats.commands += len(batch)
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        for pending, outcome in decided:
            own = [positions[id(event)] for event in outcome.events if id(event) in positions]
            position = max(own) if own else outcome.fixed_position
            self._resolve(pending, CommandResult(outcome.value, position))
        for pending, error in refused:
            self._fail(pending, error)

    # ---- settling futures ------------------------------------------------------------------

    def _resolve(self, pending: _Pending, result: CommandResult[Any]) -> None:
        self._settle(pending, True, result)

    def _fail(self, pending: _Pending, error: BaseException) -> None:
        self._settle(pending, False, error)

    def _settle(self, pending: _Pending, ok: bool, value: Any) -> None:
        future = pending.future
        if isinstance(future, asyncio.Future):
            self._settlements.append((future, ok, value))
        else:
            _settle_one(future, ok, value)

    def _hand_over_settlements(self) -> None:
        settlements, self._settlements = self._settlements, []
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for settlement in settlements:
            by_loop.setdefault(settlement[0].get_loop(), []).append(settlement)
        for loop, items in by_loop.items():
            if loop is self._loop and _running_loop() is loop:  # loop mode, settled in place
                _settle_on_loop(items)
                continue
            try:
                loop.call_soon_threadsafe(_settle_on_loop, items)
            except RuntimeError:  # the loop is closed: nobody awaits these any more
                pass

    def _evict_stale(self, batch: list[_Pending]) -> None:
        cached = {
            cid: conversation.version
            for cid in {_conversation_of(p.command) for p in batch} - {None}
            if (conversation := self.cache.get(cid)) is not None
        }
        if not cached:
            return
        current = self.app.current_versions(cached)
        stale = [cid for cid, version in cached.items() if current.get(cid, version) != version]
        if stale:
            self.stats.stale_reloads += len(stale)
            self.cache.evict(stale)

    def _save(self, uow: UnitOfWork) -> dict[int, int]:
        if not uow.events:
            return {}
        recordings = self.app.append(uow.events, **_append_options(uow))
        return self._saved(uow, [r.notification.id for r in recordings])

    def _saved(self, uow: UnitOfWork, positions: list[int]) -> dict[int, int]:
        """Count the saved batch; each event's log position, by the event's identity."""
        self.stats.batches += 1
        self.stats.events += len(uow.events)
        return {id(event): position for event, position in zip(uow.events, positions, strict=True)}

    def _after_save(self, uow: UnitOfWork) -> list[Any]:
        """Cache the batch's aggregates; snapshot those that crossed a `SNAPSHOT_INTERVAL`.
        The snapshots are taken now (the aggregate changes with the next batch) and returned
        to be stored by the caller."""
        snapshots = []
        for conversation_id, conversation in uow.touched.items():
            self.cache.put(conversation)
            before = uow.versions_before[conversation_id]
            if conversation.version // SNAPSHOT_INTERVAL > before // SNAPSHOT_INTERVAL:
                snapshots.append(self.app.snapshot_of(conversation))
        return snapshots

    def _put_snapshots(self, snapshots: list[Any]) -> None:
        if not snapshots:
            return
        try:
            self.app.put_snapshots(snapshots)
        except Exception:  # a snapshot is only a cache: log, never fail the batch
            log.exception("%d snapshots failed", len(snapshots))


def _append_options(uow: UnitOfWork) -> dict[str, Any]:
    return {"message_index": uow.index_changes} if uow.index_changes else {}


def _conversation_of(command: Command) -> Any:
    return getattr(command, "conversation_id", None)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _settle_on_loop(settlements: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in settlements:
        _settle_one(future, ok, value)


def _settle_one(future: asyncio.Future[Any] | Future[Any], ok: bool, value: Any) -> None:
    if future.done():  # a caller that gave up (cancelled) no longer wants it
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)
