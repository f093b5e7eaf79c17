"""The replay scenario: fill a fresh event log, then time `loopify replay` rebuilding every read
model from it, exactly as an operator runs it.

Both steps are the project's own commands in child processes on a temporary LOOPIFY_DATA_DIR
(embedded Postgres and Redis, stopped at the end): `scripts/seed_log.py` writes the events
through the real aggregate, `loopify replay --projection all` rebuilds the Postgres generation
(then switches to it) and the Redis counters. The figure is events replayed per second of the
replay command's wall time, start-up included.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from scripts.bench.stats import without_messages
from scripts.bench.servers import INHERITED_SETTINGS_DROPPED, PROJECT_ROOT, SERVE_ENTRY

SEED_TIMEOUT_S = 3600.0  # 1,000,000 events take minutes on 2 cores; bounded all the same
REPLAY_TIMEOUT_S = 3600.0
DEFAULT_EVENTS = 1_000_000
DEFAULT_CONVERSATIONS = 2000
_SEEDED = re.compile(r"log head is ([\d,]+)")
_POSTGRES_RATE = re.compile(r"\(([\d,]+) events/s\), now live")


def replay_result(events: int, conversations: int, out: Any) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="loopify-bench-replay-"))
    try:
        env = {k: v for k, v in os.environ.items() if k not in INHERITED_SETTINGS_DROPPED}
        env.update(LOOPIFY_DATA_DIR=str(data_dir), PYTHONPATH=str(PROJECT_ROOT))
        print(f"seeding {events:,} events over {conversations:,} conversations in {data_dir}", file=out)
        began = time.monotonic()
        seeded = _run(
            [sys.executable, str(PROJECT_ROOT / "scripts" / "seed_log.py"), "--events", str(events), "--conversations", str(conversations)],
            env,
            SEED_TIMEOUT_S,
        )
        seed_s = time.monotonic() - began
        match = _SEEDED.search(seeded)
        logged = int(match.group(1).replace(",", "")) if match else 0
        print(f"seeded {logged:,} events in {seed_s:.0f} s; replaying", file=out)
        cpu_before = _children_cpu_s()
        began = time.monotonic()
        replayed = _run([sys.executable, "-c", SERVE_ENTRY, "replay", "--projection", "all"], env, REPLAY_TIMEOUT_S)
        replay_s = time.monotonic() - began
        cpu_s = _children_cpu_s() - cpu_before
        print(replayed.strip(), file=out)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    postgres_rate = _POSTGRES_RATE.search(replayed)
    return {
        **without_messages("replay"),  # no chat messages: see the keys below
        "server_cpu_s": round(cpu_s, 1),  # the replay process (and its children)
        "server_rss_mb": None,
        "events": logged,
        "conversations": conversations,
        "seed_s": round(seed_s, 1),
        "replay_s": round(replay_s, 1),
        "events_per_s": round(logged / replay_s, 1) if replay_s > 0 else 0.0,
        # The Postgres build alone, as `loopify replay` reports it (no start-up, no Redis).
        "postgres_events_per_s": float(postgres_rate.group(1).replace(",", "")) if postgres_rate else None,
        "replay_output": replayed.strip().splitlines()[-6:],
        "passed": logged > 0 and postgres_rate is not None,
    }


def _run(command: list[str], env: dict[str, str], timeout_s: float) -> str:
    done = subprocess.run(command, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout_s, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[1:3])} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
