"""Measure write-side throughput: committed send_message commands per second with N senders.

Each sender is a thread that sends to its own DIRECT conversation and waits for its commit
before sending again (closed loop), as a client waiting for its ack does. Runs against the
embedded Postgres in a temporary data dir unless DATABASE_URL is set.

    python scripts/write_throughput.py --senders 1 8 64 --seconds 5 --runs 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from application.commands import SendMessage, StartConversation  # noqa: E402
from application.group_commit import GroupCommitWriter  # noqa: E402
from application.messaging import MessagingApplication  # noqa: E402
from infrastructure.embedded import EmbeddedPostgres  # noqa: E402
from infrastructure.postgres_url import parse_database_url  # noqa: E402
from infrastructure.settings import load_settings  # noqa: E402


def run_once(app: MessagingApplication, senders: int, seconds: float) -> tuple[float, float]:
    writer = GroupCommitWriter(app)
    writer.start()
    try:
        starters = [f"s{senders}-{i}-{time.time_ns()}" for i in range(senders)]
        conversations = [writer.execute(StartConversation(s, "DIRECT", ("peer",))).value.id for s in starters]
        counts = [0] * senders
        deadline = time.monotonic() + seconds
        start_stats = writer.stats.commands, writer.stats.batches

        def sender(index: int) -> None:
            conversation_id = conversations[index]
            actor = starters[index]
            while time.monotonic() < deadline:
                writer.execute(SendMessage(actor, conversation_id, "hello"))
                counts[index] += 1

        threads = [threading.Thread(target=sender, args=(i,)) for i in range(senders)]
        began = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - began
        commands = writer.stats.commands - start_stats[0]
        batches = writer.stats.batches - start_stats[1]
        return sum(counts) / elapsed, commands / max(batches, 1)
    finally:
        writer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--senders", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    settings = load_settings()
    server = None
    url = settings.database_url
    if not url:
        server = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="loopify-bench-")))
        url = server.start()
    app = MessagingApplication(env=parse_database_url(url).eventsourcing_env())
    try:
        print(f"{'senders':>8} {'saves/s (median)':>17} {'runs':>24} {'mean batch':>11}")
        for senders in args.senders:
            results = [run_once(app, senders, args.seconds) for _ in range(args.runs)]
            rates = [rate for rate, _ in results]
            batch = statistics.median(b for _, b in results)
            runs = ", ".join(f"{r:.0f}" for r in rates)
            print(f"{senders:>8} {statistics.median(rates):>17.0f} {runs:>24} {batch:>11.1f}", flush=True)
    finally:
        app.close()
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
