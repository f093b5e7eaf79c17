"""What one group-commit batch costs: the writer's CPU (deciding, encoding, the append call)
and Postgres's CPU (the append and its durable commit), per batch of N sends
(docs/performance.md, the seventh session).

    python scripts/writer_batch_cost.py [--sends-per-batch 2] [--batches 400]

It starts an embedded Postgres in a temporary directory (stopped at the end), opens 200
one-to-one conversations, and then runs each batch through `GroupCommitWriter._process` on
this thread, the way the writer thread runs it, so no other Python thread competes for the
GIL while it is timed. Postgres's CPU is that of every process of the embedded server (the
backends, the WAL writer) over all batches.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import Future
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil  # noqa: E402

from application.commands import SendMessage, StartConversation  # noqa: E402
from application.group_commit import GroupCommitWriter, _Pending  # noqa: E402
from application.messaging import MessagingApplication  # noqa: E402
from infrastructure.embedded import EmbeddedPostgres  # noqa: E402
from infrastructure.postgres_url import parse_database_url  # noqa: E402
from scripts.bench.metering import cpu_delta, cpu_seconds  # noqa: E402
from scripts.bench.servers import postgres_pid  # noqa: E402

CONVERSATIONS = 200
CONTENT = "Is the bike still for sale? I could pick it up on Saturday."


def postgres_processes(root: Path) -> list[psutil.Process]:
    """The embedded Postgres in `root`: its postmaster and every child (backends, WAL writer)."""
    pid = postgres_pid(root)
    if pid is None:
        raise RuntimeError(f"no running Postgres in {root}")
    postmaster = psutil.Process(pid)
    return [postmaster, *postmaster.children(recursive=True)]


def measure(per_batch: int, batches: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="loopify-writer-cost-"))
    postgres = EmbeddedPostgres(root)
    database_url = postgres.start()
    try:
        app = MessagingApplication(env=parse_database_url(database_url).eventsourcing_env())
        writer = GroupCommitWriter(app)  # not started: this thread runs its batches
        try:
            conversations = []
            for i in range(CONVERSATIONS):
                pending = _Pending(StartConversation(f"u{i}", "DIRECT", (f"v{i}",)), Future())
                writer._process([pending])
                conversations.append(pending.future.result().value.id)  # type: ignore[union-attr]
            cpu, wall = [], []
            server_before = cpu_seconds(postgres_processes(root))
            for n in range(batches):
                batch: list[_Pending] = []
                for k in range(per_batch):
                    i = (n * per_batch + k) % CONVERSATIONS
                    command = SendMessage(f"u{i}", conversations[i], CONTENT, client_message_id=f"{n}.{k}")
                    batch.append(_Pending(command, Future()))
                cpu_start, wall_start = time.thread_time(), time.perf_counter()
                writer._process(batch)
                cpu.append(time.thread_time() - cpu_start)
                wall.append(time.perf_counter() - wall_start)
                for pending in batch:
                    pending.future.result()  # raises if the batch failed
            server_per_batch = cpu_delta(server_before, cpu_seconds(postgres_processes(root))) / batches
        finally:
            app.close()
    finally:
        postgres.stop()
    print(
        f"{batches} batches of {per_batch} sends: writer CPU p50 {statistics.median(cpu) * 1e3:.2f} ms,"
        f" Postgres CPU {server_per_batch * 1e3:.2f} ms (mean), wall p50 {statistics.median(wall) * 1e3:.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sends-per-batch", type=int, default=2)
    parser.add_argument("--batches", type=int, default=400)
    args = parser.parse_args()
    measure(args.sends_per_batch, args.batches)


if __name__ == "__main__":
    main()
