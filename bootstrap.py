"""The composition root: the one module that knows both `interfaces` and `infrastructure`.

`build(settings)` resolves Postgres and Redis (external URLs, or embedded servers in the data
dir), creates the write side and returns a `Container`; `create_app(settings)` wraps it in the
Starlette app. Nothing is built at import time.
"""

from __future__ import annotations

import logging
import dataclasses
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterator

import asyncio
import json
import multiprocessing
import os
import signal
from multiprocessing.sharedctypes import SynchronizedString

import asyncpg
import psycopg
import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry
from broadcaster import Broadcast
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool

from application.group_commit import GroupCommitWriter
from application.messaging import MessagingApplication
from application.service import MessagingService
from infrastructure.embedded import EmbeddedPostgres, EmbeddedRedis
from infrastructure.event_store import schema_creation_lock
from infrastructure.garbage_collection import tune_for_server
from infrastructure.jwt_tokens import JwtCodec
from infrastructure.presence import REFRESH_S as PRESENCE_REFRESH_S
from infrastructure.presence import SWEEP_S as PRESENCE_SWEEP_S
from infrastructure.presence import PresenceStore
from infrastructure.redis_broadcast import ResilientRedisBackend
from infrastructure.redis_guards import SendGuard, TypingGate
from infrastructure.redis_mux import RedisMux
from infrastructure.postgres_url import parse_database_url
from infrastructure.settings import Settings
from interfaces.http.app import build_http_app
from interfaces.replay_cli import ProgressPrinter, print_report
from interfaces.runtime import Runtime
from interfaces.ws.hub import Hub
from interfaces.ws.maintenance import keep_devices_alive, stop_stale_typing, sweep_presence
from projections.position_watcher import PositionWatcher
from projections.queries import ReadModel
from projections.read_your_writes import ReadYourWrites
from projections.redis_counters import RedisCounters
from projections.runner import ProjectionRunner, RunnerStatus
from projections.relay import Relay
from projections.replay import Replay
from projections.schema import ensure_read_model

log = logging.getLogger(__name__)

ROLES = ("all", "api", "projector", "push")
API_ROLES = ("all", "api")  # serve GraphQL/WebSocket and accept commands
PROJECTOR_ROLES = ("all", "projector")  # follow the log into the read models
READ_POOL_SIZE = 10  # asyncpg connections for queries per api process
REDIS_POOL_SIZE = 256  # concurrent Redis commands per api process (each a socket to Redis)
REDIS_POOL_WAIT_S = 5.0  # past this a request fails: Redis is down or the node is drowning
PROJECTOR_STATUS_BYTES = 4096  # the child projector's /health figures, as JSON in shared memory
PROJECTOR_STATUS_EVERY_S = 0.2
PROJECTOR_STOP_TIMEOUT_S = 15.0
# Frames above the protocol's 64 KB get a PAYLOAD_TOO_LARGE error and the socket stays open;
# frames above this are abuse, and uvicorn closes the socket (1009) before reading them whole.
WS_MAX_FRAME_BYTES = 1024 * 1024


@dataclass
class Container:
    settings: Settings
    database_url: str
    redis_url: str | None
    app: MessagingApplication
    jwt: JwtCodec
    writer: GroupCommitWriter | None = None
    service: MessagingService | None = None
    _embedded: list[Any] = field(default_factory=list)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.stop()
        self.app.close()
        for server in reversed(self._embedded):
            server.stop()
        self._embedded.clear()


def resolve_servers(settings: Settings, *, need_redis: bool = True) -> tuple[str, str | None, list[Any]]:
    """External URLs when configured, otherwise embedded servers in the data dir."""
    embedded: list[Any] = []
    database_url = settings.database_url
    if not database_url:
        postgres = EmbeddedPostgres(settings.data_dir)
        database_url = postgres.start()
        embedded.append(postgres)
    redis_url = settings.effective_redis_url
    if not redis_url and need_redis:
        redis_server = EmbeddedRedis(settings.data_dir)
        redis_url = redis_server.start()
        embedded.append(redis_server)
    return database_url, redis_url, embedded


def build(
    settings: Settings, *, with_writer: bool = True, need_redis: bool = True, writer_thread: bool = True
) -> Container:
    """`writer_thread=False`: the caller starts the writer on its event loop (`start_on_loop`)."""
    database_url, redis_url, embedded = resolve_servers(settings, need_redis=need_redis)
    try:
        with schema_creation_lock(database_url):
            app = MessagingApplication(env=parse_database_url(database_url).eventsourcing_env())
    except Exception:
        for server in reversed(embedded):
            server.stop()
        raise
    container = Container(
        settings=settings,
        database_url=database_url,
        redis_url=redis_url,
        app=app,
        jwt=JwtCodec(settings.resolved_jwt_secret(), settings.jwt_algorithm),
        _embedded=embedded,
    )
    if with_writer:
        container.writer = GroupCommitWriter(app)
        if writer_thread:
            container.writer.start()
        container.service = MessagingService(container.writer)
    return container


def create_app(settings: Settings, role: str = "all") -> Any:
    """The ASGI app for `loopify serve`; everything is built in its lifespan."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    runtime = Runtime(role=role, is_development=settings.is_development, cors_origin=settings.frontend_url)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            container = build(settings, with_writer=role in API_ROLES, writer_thread=False)
            stack.callback(container.close)
            if container.writer is not None:
                # On the serving loop: a writer thread would share the GIL with it (see
                # `GroupCommitWriter.start_on_loop`).
                stack.push_async_callback(container.app.recorder.aclose_loop_connection)
                await container.writer.start_on_loop()
                stack.push_async_callback(container.writer.stop_on_loop)
            assert container.redis_url is not None
            # A restarted Redis closes every pooled connection: retry once or twice on a fresh one
            # instead of failing the first request that touches Redis afterwards.
            # A blocking pool: under a burst, a handler waits for a connection instead of failing
            # with INTERNAL when more than max_connections are busy at once.
            redis_pool = aioredis.BlockingConnectionPool.from_url(
                container.redis_url,
                max_connections=REDIS_POOL_SIZE,
                timeout=REDIS_POOL_WAIT_S,
                retry=AsyncRetry(ExponentialBackoff(cap=0.5, base=0.05), 3),
                retry_on_error=[redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
            )
            redis_client = aioredis.Redis(connection_pool=redis_pool)
            # An explicit pool is not closed by the client: disconnect it, or an embedded Redis
            # still sees clients at exit and keeps running.
            stack.push_async_callback(redis_pool.disconnect)
            stack.push_async_callback(redis_client.aclose)
            runtime.attach(
                service=container.service,
                authenticate=container.jwt.authenticate,
                probes={
                    "database": lambda: _probe_database(container),
                    "redis": lambda: _probe_redis(redis_client),
                },
                writer_stats=container.writer.stats.as_dict if container.writer else None,
            )
            runner: ProjectionRunner | ProjectorProcess | None = None
            if role == "projector":
                runner = _projection_runner(stack, container.app, container.database_url, container.redis_url)
                runner.start()
                stack.callback(runner.stop)
            elif role == "all":
                # The projector gets a process of its own: as a thread it competed with the
                # event loop for the GIL and stalled every socket of the node.
                runner = ProjectorProcess(container.database_url, container.redis_url)
                runner.start()
                stack.callback(runner.stop)
            watcher = None
            if role in API_ROLES:
                await run_in_threadpool(_ensure_read_model, container.database_url)
                pool = await asyncpg.create_pool(container.database_url, min_size=1, max_size=READ_POOL_SIZE)
                stack.push_async_callback(pool.close)
                watcher = PositionWatcher(container.database_url)
                await watcher.start()
                stack.push_async_callback(watcher.stop)
                # The hot path's Redis calls (send guard, typing, presence, read-your-writes) share
                # one pipelined connection; redis-py's pool stays for everything else.
                mux = RedisMux(container.redis_url)
                stack.push_async_callback(mux.aclose)
                read_your_writes = ReadYourWrites(mux, watcher)
                read_model = ReadModel(pool, redis_client)
                runtime.attach(
                    read_model=read_model,
                    wait_for_own_writes=read_your_writes.wait_for_user,
                    note_write=read_your_writes.note_write,
                )
                await _start_realtime(stack, runtime, container, mux, read_model)
            runtime.attach(projection_status=lambda: _projection_status(container, runner, watcher))
            yield

    return build_http_app(runtime, lifespan)


async def _start_realtime(
    stack: AsyncExitStack, runtime: Runtime, container: Container, mux: RedisMux, read_model: ReadModel
) -> None:
    """The WebSocket side of an api node: fan-out hub, presence, guards, periodic duties."""
    assert container.redis_url is not None
    backend = ResilientRedisBackend(container.redis_url)
    broadcast = Broadcast(backend=backend)
    await broadcast.connect()
    stack.push_async_callback(broadcast.disconnect)
    hub = Hub(broadcast, read_model)
    stack.push_async_callback(hub.close)
    backend.add_reconnect_listener(hub.on_reconnect)
    runtime.attach(
        hub=hub,
        presence=PresenceStore(mux),
        send_guard=SendGuard(mux, container.settings.rate_limit_per_minute),
        typing_gate=TypingGate(mux),
    )
    for duty in (
        keep_devices_alive(runtime, PRESENCE_REFRESH_S),
        sweep_presence(runtime, PRESENCE_SWEEP_S),
        stop_stale_typing(runtime),
    ):
        task = asyncio.create_task(duty)
        stack.callback(task.cancel)


def _projection_runner(
    stack: AsyncExitStack | ExitStack, event_log: MessagingApplication, database_url: str, redis_url: str
) -> ProjectionRunner:
    # Fail fast: while Redis is down the runner projects Postgres and retries Redis itself;
    # redis-py's own retries would stall every batch for seconds.
    sync_redis = redis.Redis.from_url(redis_url, retry=Retry(NoBackoff(), 0), socket_timeout=2, socket_connect_timeout=2)
    stack.callback(sync_redis.close)
    return ProjectionRunner(event_log, database_url, RedisCounters(sync_redis), relay=Relay(sync_redis))


class ProjectorProcess:
    """The projection runner of a `--role all` node, in a child process on the node's servers.

    The child stops when asked, on SIGTERM/SIGINT, or when the parent dies; its figures reach
    the parent's /health through a small block of shared memory."""

    def __init__(self, database_url: str, redis_url: str) -> None:
        context = multiprocessing.get_context("spawn")  # no inherited threads, sockets or loop
        self._stop = context.Event()
        self._status: SynchronizedString = context.Array("c", PROJECTOR_STATUS_BYTES)  # type: ignore[assignment]
        self._process = context.Process(
            target=_run_projector_process,
            args=(database_url, redis_url, self._stop, self._status),
            name="loopify-projector",
            daemon=True,
        )

    def start(self) -> None:
        self._process.start()

    def stop(self) -> None:
        self._stop.set()
        self._process.join(PROJECTOR_STOP_TIMEOUT_S)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()

    @property
    def is_running(self) -> bool:
        return self._process.is_alive()

    @property
    def status(self) -> RunnerStatus:
        raw = self._status.value
        return RunnerStatus(**json.loads(raw)) if raw else RunnerStatus(last_error="projector starting")


def _run_projector_process(database_url: str, redis_url: str, stop: Any, status: SynchronizedString) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The parent decides when to stop: a Ctrl-C reaches the whole process group, and the
    # parent still needs the projector while it drains its writer.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    parent = multiprocessing.parent_process()
    app = MessagingApplication(env=parse_database_url(database_url).eventsourcing_env())
    with ExitStack() as stack:
        stack.callback(app.close)
        runner = _projection_runner(stack, app, database_url, redis_url)
        tune_for_server()
        runner.start()
        stack.callback(runner.stop)
        while not stop.wait(PROJECTOR_STATUS_EVERY_S):
            if parent is not None and not parent.is_alive():
                break
            figures = dataclasses.asdict(runner.status)
            figures["last_error"] = (figures["last_error"] or "")[:1000] or None
            status.value = json.dumps(figures).encode()
    os._exit(0)  # skip interpreter teardown: everything above is closed


def _ensure_read_model(database_url: str) -> None:
    with psycopg.connect(database_url) as connection, connection.cursor() as cursor:
        ensure_read_model(cursor)


async def _projection_status(
    container: Container, runner: ProjectionRunner | ProjectorProcess | None, watcher: PositionWatcher | None
) -> dict[str, Any]:
    head = await run_in_threadpool(container.app.max_position)
    if runner is not None:
        status = runner.status
        status.head = max(status.head, head)
        return status.as_dict()
    position = watcher.position if watcher is not None else 0
    return {"position": position, "head": head, "lag": max(0, head - position)}


async def _probe_database(container: Container) -> bool:
    await run_in_threadpool(container.app.max_position)
    return True


async def _probe_redis(client: aioredis.Redis) -> bool:
    return bool(await client.ping())


# ---- command line ----------------------------------------------------------------------------


def _serve(settings: Settings, host: str, port: int, role: str) -> None:
    run_server(create_app(settings, role), host, port)


def run_server(app: Any, host: str, port: int, *, log_level: str = "info") -> None:
    """Serve an ASGI app as `loopify serve` does: the collector tuned for a server process, and
    the gateway's uvicorn settings (scripts/ceiling_server.py serves its app through this too)."""
    import uvicorn

    tune_for_server()
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        ws="websockets-sansio",
        ws_max_size=WS_MAX_FRAME_BYTES,
        ws_per_message_deflate=False,  # compression costs 35-45% throughput and 2x memory per socket
    )


def _mint_token(settings: Settings, user_id: str, ttl_s: int) -> str:
    return JwtCodec(settings.resolved_jwt_secret(), settings.jwt_algorithm).mint(user_id, ttl_s)


@contextmanager
def _open_log(settings: Settings) -> Iterator[MessagingApplication]:
    """The event store alone (no writer), for audit and replay scripts."""
    container = build(settings, with_writer=False, need_redis=False)
    try:
        yield container.app
    finally:
        container.close()


def _replay(settings: Settings, projection: str, verify: bool) -> int:
    container = build(settings, with_writer=False)
    try:
        assert container.redis_url is not None
        counters = RedisCounters(redis.Redis.from_url(container.redis_url))
        replay = Replay(container.app, container.database_url, counters, on_progress=ProgressPrinter())
        if projection in ("all", "postgres"):
            report = replay.rebuild_postgres(verify=verify)
            print_report(report)
            if not report.switched:
                return 1
        if projection in ("all", "redis"):
            position = replay.rebuild_redis()
            print(f"rebuilt the Redis projection at position {position:,}")
        return 0
    finally:
        container.close()


def _bench(settings: Settings, argv: list[str]) -> int:
    """`loopify bench`: the load generator in scripts/bench (it starts its own servers unless --url)."""
    from scripts.bench.cli import run

    return run(argv, jwt_secret=settings.jwt_secret, jwt_algorithm=settings.jwt_algorithm)


def main(argv: list[str] | None = None) -> int:
    from infrastructure.settings import load_settings
    from interfaces.cli import CliWiring
    from interfaces.cli import main as cli_main

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    wiring = CliWiring(
        load_settings=load_settings,
        serve=_serve,
        mint_token=_mint_token,
        open_log=_open_log,
        replay=_replay,
        bench=_bench,
    )
    return cli_main(argv, wiring)


if __name__ == "__main__":
    raise SystemExit(main())
