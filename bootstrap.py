"""The composition root: the one module that knows both `interfaces` and `infrastructure`.

`build(settings)` resolves Postgres and Redis (external URLs, or embedded servers in the data
dir), creates the write side and returns a `Container`; `create_app(settings)` wraps it in the
Starlette app. Nothing is built at import time.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterator

import redis.asyncio as aioredis
from starlette.applications import Starlette

from application.group_commit import GroupCommitWriter
from application.messaging import MessagingApplication
from application.service import MessagingService
from infrastructure.embedded import EmbeddedPostgres, EmbeddedRedis
from infrastructure.jwt_tokens import JwtCodec
from infrastructure.postgres_url import parse_database_url
from infrastructure.settings import Settings
from interfaces.http.app import build_http_app
from interfaces.runtime import Runtime

log = logging.getLogger(__name__)

ROLES = ("all", "api", "projector", "push")


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


def build(settings: Settings, *, with_writer: bool = True, need_redis: bool = True) -> Container:
    database_url, redis_url, embedded = resolve_servers(settings, need_redis=need_redis)
    try:
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
        container.writer.start()
        container.service = MessagingService(container.writer)
    return container


def create_app(settings: Settings, role: str = "all") -> Starlette:
    """The ASGI app for `loopify serve`; everything is built in its lifespan."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    runtime = Runtime(role=role, is_development=settings.is_development, cors_origin=settings.frontend_url)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        container = build(settings, with_writer=role in ("all", "api"))
        assert container.redis_url is not None
        redis_client = aioredis.from_url(container.redis_url)
        runtime.attach(
            service=container.service,
            authenticate=container.jwt.authenticate,
            probes={
                "database": lambda: _probe_database(container),
                "redis": lambda: _probe_redis(redis_client),
            },
            writer_stats=container.writer.stats.as_dict if container.writer else None,
        )
        try:
            yield
        finally:
            await redis_client.aclose()
            container.close()

    return build_http_app(runtime, lifespan)


async def _probe_database(container: Container) -> bool:
    from starlette.concurrency import run_in_threadpool

    await run_in_threadpool(container.app.max_position)
    return True


async def _probe_redis(client: aioredis.Redis) -> bool:
    return bool(await client.ping())


# ---- command line ----------------------------------------------------------------------------


def _serve(settings: Settings, host: str, port: int, role: str) -> None:
    import uvicorn

    uvicorn.run(create_app(settings, role), host=host, port=port, log_level="info", ws="websockets-sansio")


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


def main(argv: list[str] | None = None) -> int:
    from infrastructure.settings import load_settings
    from interfaces.cli import CliWiring
    from interfaces.cli import main as cli_main

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    wiring = CliWiring(load_settings=load_settings, serve=_serve, mint_token=_mint_token, open_log=_open_log)
    return cli_main(argv, wiring)


if __name__ == "__main__":
    raise SystemExit(main())
