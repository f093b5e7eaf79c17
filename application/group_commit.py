"""Group commit: one writer thread decides queued commands together and saves them in one
transaction.

Why: `eventsourcing` takes an exclusive lock on the events table for every save, so separate
saves are serialised at roughly one per commit latency (230-480/s measured here) however many
threads call them. Sharing the transaction multiplies that by the batch size.

How: callers enqueue a command and get a future. The writer takes everything queued (up to
`MAX_BATCH_COMMANDS`), runs each command's handler in arrival order on in-memory aggregates,
and saves all resulting events (plus message-index rows) in one transaction. At low load a
batch is one command and commits at once; under load commands pile up during the previous
commit, so batches grow exactly when they help.

Guarantees kept:
- per-conversation order: one thread decides commands in arrival order;
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
from application.unit_of_work import AggregateCache, Outcome, PollutedAggregateError, UnitOfWork
from domain.errors import DomainError

log = logging.getLogger(__name__)

# Bounds one transaction's size and the latency of its last command. Each command makes at most
# one event; psycopg 3.3's pipeline stalled here on single saves of ~1,500+ events, so stay well below.
MAX_BATCH_COMMANDS = 500
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

    # ---- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        if self._running:
            return
        self._running = True
        self._thread = threading.Thread(target=self._run, name="group-commit-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish what is queued, then stop."""
        if not self._running:
            return
        self._running = False
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def is_running(self) -> bool:
        return self._running and self._thread is not None and self._thread.is_alive()

    def queue_depth(self) -> int:
        return self._queue.qsize()

    # ---- submitting ----------------------------------------------------------------------

    def submit(self, command: Command) -> Future[CommandResult[Any]]:
        """From a plain thread: a concurrent future."""
        future: Future[CommandResult[Any]] = Future()
        if not self._running:
            future.set_exception(WriterStoppedError("the writer is not running"))
            return future
        self._queue.put(_Pending(command, future))
        return future

    def submit_async(self, command: Command) -> asyncio.Future[CommandResult[Any]]:
        """From an event loop: an asyncio future of that loop. The writer settles a batch's
        futures with one `call_soon_threadsafe`; wrapping concurrent futures cost a lock, a
        condition and a thread-safe call per command, a fifth of the loop at 550 msg/s."""
        future: asyncio.Future[CommandResult[Any]] = asyncio.get_running_loop().create_future()
        if not self._running:
            future.set_exception(WriterStoppedError("the writer is not running"))
            return future
        self._queue.put(_Pending(command, future))
        return future

    def execute(self, command: Command, timeout: float | None = 30.0) -> CommandResult[Any]:
        """Blocking submit, for threads (the CLI, tests, benchmarks)."""
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
            self.stats.conflicts += 1
            self._check_freshness_until = time.monotonic() + FRESHNESS_CHECK_S
            log.info("batch of %d hit %s; re-running each command alone", len(batch), type(error).__name__)
            for pending in batch:
                self._commit_alone(pending)
        except Exception as error:  # the database is down, a bug...: fail this batch only
            log.exception("batch of %d failed", len(batch))
            for pending in batch:
                self._fail(pending, error)

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
        commands = [p.command for p in batch]
        new_ids, referenced = new_message_ids(commands), referenced_message_ids(commands)
        prefetch = referenced if sends_assumed_new else referenced | new_ids
        known = self.app.lookup_messages(prefetch) if prefetch else {}
        uow = UnitOfWork(self.app, self.cache, known, looked_up=prefetch | new_ids)
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
            positions = self._save(uow)
        except BaseException:
            # The in-memory aggregates may now hold unsaved changes: forget them.
            self.cache.evict(uow.touched)
            raise
        self._after_save(uow)
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
        kwargs = {"message_index": uow.index_changes} if uow.index_changes else {}
        recordings = self.app.append(uow.events, **kwargs)
        self.stats.batches += 1
        self.stats.events += len(uow.events)
        return {id(r.domain_event): r.notification.id for r in recordings}

    def _after_save(self, uow: UnitOfWork) -> None:
        for conversation_id, conversation in uow.touched.items():
            self.cache.put(conversation)
            before = uow.versions_before[conversation_id]
            if conversation.version // SNAPSHOT_INTERVAL > before // SNAPSHOT_INTERVAL:
                try:
                    self.app.take_snapshot_of(conversation)
                except Exception:  # a snapshot is only a cache: log, never fail the batch
                    log.exception("snapshot of %s failed", conversation_id)


def _conversation_of(command: Command) -> Any:
    return getattr(command, "conversation_id", None)


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
