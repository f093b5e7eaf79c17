"""What one live projector batch costs: the runner thread's CPU, its Postgres backend's CPU,
and the wall time, per batch of N new messages (docs/performance.md, the sixth session).

    python scripts/projector_batch_cost.py [--messages-per-batch 2] [--batches 400]

It starts an embedded Postgres and Redis in a temporary directory (stopped at the end),
opens 200 one-to-one conversations, and then, per batch: sends N messages through the
group-commit writer (not measured), reads them from the log, and times
`ProjectionRunner._project` (the read model, the Redis projection and the relay's frames) and
the log read that follows a batch, on the runner's own connections.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402
import redis  # noqa: E402

from application.commands import SendMessage, StartConversation  # noqa: E402
from application.group_commit import GroupCommitWriter  # noqa: E402
from application.messaging import MessagingApplication  # noqa: E402
from infrastructure.embedded import EmbeddedPostgres, EmbeddedRedis  # noqa: E402
from infrastructure.postgres_url import parse_database_url  # noqa: E402
from projections.redis_counters import POSITION_KEY, RedisCounters  # noqa: E402
from projections.relay import Relay  # noqa: E402
from projections.runner import ASYNC_COMMIT, ProjectionRunner  # noqa: E402
from projections.schema import ensure_read_model  # noqa: E402

CONVERSATIONS = 200
COMMAND_TIMEOUT_S = 30.0


def backend_cpu_s(pid: int) -> float:
    """User + system CPU of a Postgres backend, from /proc (clock ticks: read over many batches)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(per_batch: int, batches: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="loopify-batch-cost-"))
    postgres, redis_server = EmbeddedPostgres(root), EmbeddedRedis(root)
    database_url, redis_url = postgres.start(), redis_server.start()
    try:
        app = MessagingApplication(env=parse_database_url(database_url).eventsourcing_env())
        writer = GroupCommitWriter(app)
        writer.start()
        client = redis.Redis.from_url(redis_url)
        try:
            conversations = [
                writer.execute(StartConversation(f"u{i}", "DIRECT", (f"v{i}",)), timeout=COMMAND_TIMEOUT_S).value.id
                for i in range(CONVERSATIONS)
            ]
            runner = ProjectionRunner(app, database_url, RedisCounters(client), relay=Relay(client))
            with psycopg.connect(database_url, options=ASYNC_COMMIT, autocommit=True) as work:
                with work.transaction(), work.cursor() as cursor:
                    ensure_read_model(cursor)
                client.set(POSITION_KEY, 0)
                runner._redis_behind = runner._relay_behind = False  # as after the runner's start-up
                backend = work.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
                position = runner._tracked_position(work)  # as at the runner's start: 0, and the generation
                position = runner._project(work, app.read_log(position, 10_000), position)  # the conversations
                cpu, wall = [], []
                backend_before = backend_cpu_s(backend)
                for n in range(batches):
                    for k in range(per_batch):
                        i = (n * per_batch + k) % CONVERSATIONS
                        writer.execute(SendMessage(f"u{i}", conversations[i], "hello there"), timeout=COMMAND_TIMEOUT_S)
                    batch = app.read_log(position, 1_000)
                    cpu_start, wall_start = time.thread_time(), time.perf_counter()
                    position = runner._project(work, batch, position)
                    app.read_log(position, 1_000)  # the read after a batch, which finds nothing
                    cpu.append(time.thread_time() - cpu_start)
                    wall.append(time.perf_counter() - wall_start)
                backend_per_batch = (backend_cpu_s(backend) - backend_before) / batches
        finally:
            client.close()
            writer.stop()
            app.close()
    finally:
        redis_server.stop(force=True)
        postgres.stop()
    print(
        f"{batches} batches of {per_batch} messages: runner CPU p50 {statistics.median(cpu) * 1e3:.2f} ms,"
        f" its backend's CPU {backend_per_batch * 1e3:.2f} ms (mean), wall p50 {statistics.median(wall) * 1e3:.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages-per-batch", type=int, default=2)
    parser.add_argument("--batches", type=int, default=400)
    args = parser.parse_args()
    measure(args.messages_per_batch, args.batches)


if __name__ == "__main__":
    main()
