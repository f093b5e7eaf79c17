"""Turn a `DATABASE_URL` into the pieces the `eventsourcing` Postgres factory wants."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass(frozen=True)
class PostgresParams:
    host: str  # a hostname, or a directory holding the unix socket
    port: int
    user: str
    password: str
    dbname: str

    def eventsourcing_env(self) -> dict[str, str]:
        return {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_HOST": self.host,
            "POSTGRES_PORT": str(self.port),
            "POSTGRES_USER": self.user,
            "POSTGRES_PASSWORD": self.password,
            "POSTGRES_DBNAME": self.dbname,
            # Explicit, so a stray variable in the environment can't switch it on (see event_store.py).
            "POSTGRES_ENABLE_DB_FUNCTIONS": "n",
        }


def parse_database_url(url: str) -> PostgresParams:
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError(f"DATABASE_URL must be a postgresql:// URL, got {parts.scheme!r}")
    query = parse_qs(parts.query)
    host = query.get("host", [parts.hostname or "localhost"])[0]
    return PostgresParams(
        host=unquote(host),
        port=int(query.get("port", [parts.port or 5432])[0]),
        user=unquote(parts.username or "postgres"),
        password=unquote(parts.password or ""),
        dbname=unquote(parts.path.lstrip("/") or "postgres"),
    )


def with_database(url: str, dbname: str) -> str:
    """The same server, another database (tests create one database per test)."""
    parts = urlsplit(url)
    return parts._replace(path="/" + dbname).geturl()
