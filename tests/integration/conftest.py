"""Integration fixtures: write-side "nodes" (a MessagingApplication and its GroupCommitWriter)
on a fresh database of the shared embedded Postgres, and a way to make commands share a batch.

A node is what one server process runs. Several nodes on one database are several processes;
a node closed and opened again is a crash and restart.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from psycopg.sql import SQL, Identifier

from application.commands import Command, StartConversation
from application.group_commit import GroupCommitWriter
from application.messaging import MessagingApplication
from application.results import CommandResult
from infrastructure.event_store import APPEND_LOCK_NAMESPACE
from infrastructure.postgres_url import PostgresParams, parse_database_url, with_database

EVENTS_TABLE = "messaging_events"  # MessagingApplication.name "Messaging" + the library's suffix
COMMAND_TIMEOUT_S = 30  # far above any commit here; only a hung writer reaches it
POLL_TIMEOUT_S = 10  # bounded waits for the writer to reach a state; generous for a 2-core CI box
POLL_INTERVAL_S = 0.005


def wait_until(condition: Callable[[], bool], what: str, timeout: float = POLL_TIMEOUT_S) -> None:
    """A bounded poll: return as soon as `condition()` holds, fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(POLL_INTERVAL_S)


def connect(params: PostgresParams, *, autocommit: bool = False) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host=params.host,
        port=params.port,
        user=params.user,
        password=params.password or None,
        dbname=params.dbname,
        autocommit=autocommit,
    )


@pytest.fixture(scope="session")
def create_database(postgres_server_url: str) -> Callable[[], str]:
    """A factory of new, empty databases on the shared server (for class-scoped fixtures)."""

    def create() -> str:
        name = "t_" + uuid.uuid4().hex[:16]
        with connect(parse_database_url(postgres_server_url), autocommit=True) as conn:
            conn.execute(SQL("CREATE DATABASE {}").format(Identifier(name)))
        return with_database(postgres_server_url, name)

    return create


@pytest.fixture
def postgres_params(database_url: str) -> PostgresParams:
    return parse_database_url(database_url)


@pytest.fixture
def postgres_env(postgres_params: PostgresParams) -> dict[str, str]:
    return postgres_params.eventsourcing_env()


class LoopThread:
    """An event loop on a thread of its own, as `loopify serve` runs one: a writer started on it
    (`start_on_loop`) is driven exactly as in the server, while the test's thread submits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-event-loop", daemon=True)
        self._thread.start()

    def run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(COMMAND_TIMEOUT_S)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(COMMAND_TIMEOUT_S)
        self.loop.close()


@dataclass
class Node:
    app: MessagingApplication
    writer: GroupCommitWriter
    loop: LoopThread | None = None  # the writer runs on this loop (loop mode), else on its thread
    closed: bool = field(default=False)

    def execute(self, command: Command) -> CommandResult[Any]:
        return self.writer.execute(command, timeout=COMMAND_TIMEOUT_S)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.stop()
            if self.loop is not None:
                self.loop.run(self.app.recorder.aclose_loop_connection())  # type: ignore[attr-defined]
                self.loop.close()
            self.app.close()


@pytest.fixture
def writer_mode() -> str:
    """How nodes run their writer: "thread" (its own thread) or "loop" (a task of an event loop,
    as `loopify serve` runs it). Test modules override this fixture to run in both."""
    return "thread"


@pytest.fixture
def open_node(postgres_env: dict[str, str], writer_mode: str) -> Iterator[Callable[[], Node]]:
    """Open a node on the test's database; every node opened is closed at teardown."""
    nodes: list[Node] = []

    def open_() -> Node:
        app = MessagingApplication(env=postgres_env)
        writer = GroupCommitWriter(app)
        loop = None
        if writer_mode == "loop":
            loop = LoopThread()
            loop.run(writer.start_on_loop())
        else:
            writer.start()
        nodes.append(Node(app, writer, loop))
        return nodes[-1]

    yield open_
    for node in reversed(nodes):
        node.close()


@pytest.fixture
def node(open_node: Callable[[], Node]) -> Node:
    return open_node()


@pytest.fixture
def open_app(postgres_env: dict[str, str]) -> Iterator[Callable[..., MessagingApplication]]:
    """Open a reading application (no writer) that shares nothing in memory with any node."""
    apps: list[MessagingApplication] = []

    def open_(**env_overrides: str) -> MessagingApplication:
        apps.append(MessagingApplication(env={**postgres_env, **env_overrides}))
        return apps[-1]

    yield open_
    for app in reversed(apps):
        app.close()


def lock_waiters(params: PostgresParams) -> int:
    """How many transactions of this database wait for the appends' lock."""
    with connect(params, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks"
            " WHERE NOT granted AND locktype = 'advisory' AND classid = %s AND objid = %s::regclass::oid"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            (APPEND_LOCK_NAMESPACE, EVENTS_TABLE),
        ).fetchone()
    return int(row[0]) if row else 0


@pytest.fixture
def hold_batch(postgres_params: PostgresParams) -> Callable[[Node], AbstractContextManager[None]]:
    """`with hold_batch(node): ...submit...` makes the commands submitted inside one batch.

    How: another connection holds the appends' lock (as another append would), and the writer is
    given a "plug" command whose save waits for that lock. While it waits, everything submitted queues up;
    when the block ends the lock is released, the plug commits, and the writer takes the whole
    queue as its next batch. Tests check `writer.stats.largest_batch` to prove it happened.
    """

    @contextmanager
    def hold(node: Node) -> Iterator[None]:
        with connect(postgres_params) as blocker:  # not autocommit: the lock lasts until commit
            blocker.execute(
                "SELECT pg_advisory_xact_lock(%s, %s::regclass::oid::int4)", (APPEND_LOCK_NAMESPACE, EVENTS_TABLE)
            )
            plug = node.writer.submit(StartConversation("plug", "GROUP", ("plug-peer",)))
            wait_until(lambda: lock_waiters(postgres_params) > 0, "the writer to wait on the appends' lock")
            yield
            blocker.commit()
        plug.result(timeout=COMMAND_TIMEOUT_S)

    return hold
