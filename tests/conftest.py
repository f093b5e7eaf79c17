"""Shared fixtures: a real embedded Postgres and Redis for the whole session.

Each test that needs the event store gets its own database on the shared server, so tests
never see each other's events. Nothing here fakes Postgres or Redis.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from infrastructure.embedded import EmbeddedPostgres, EmbeddedRedis
from infrastructure.postgres_url import parse_database_url, with_database


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("loopify-data")


@pytest.fixture(scope="session")
def postgres_server_url(data_root: Path) -> Iterator[str]:
    server = EmbeddedPostgres(data_root)
    url = server.start()
    yield url
    server.stop()


@pytest.fixture(scope="session")
def redis_url(data_root: Path) -> Iterator[str]:
    server = EmbeddedRedis(data_root)
    url = server.start()
    yield url
    server.stop(force=True)  # this session owns it: stop it even if a test left a client open


@pytest.fixture
def database_url(postgres_server_url: str) -> str:
    """A new, empty database on the shared embedded server."""
    name = "t_" + uuid.uuid4().hex[:16]
    params = parse_database_url(postgres_server_url)
    with psycopg.connect(
        host=params.host, port=params.port, user=params.user, dbname=params.dbname, autocommit=True
    ) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return with_database(postgres_server_url, name)
