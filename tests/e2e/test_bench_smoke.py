"""`loopify bench` as a user runs it: a few seconds of chat against servers it starts itself,
and against one already running (`--url`). Only the correctness counters and the JSON contract
are asserted; timing belongs to the benchmark's own output, never to a test.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.e2e.server_process import ServerProcess, loopify, project_env

CEILING_SERVER = Path(__file__).resolve().parents[2] / "scripts" / "ceiling_server.py"

BENCH_TIMEOUT_S = 55  # a 3 s run plus server start (initdb), setup, drain and stop; under CI's 60 s
JWT_SECRET = "e2e-secret-bench-0123456789abcdef0123456789abcdef"
LATENCY = {"p50", "p95", "p99", "max"}
# The contract (issue 5), written out here rather than imported from the code under test.
CONTRACT = {
    "scenario": str,
    "offered_rate": (int, float),
    "sent": int,
    "acked": int,
    "delivered": int,
    "lost": int,
    "duplicates": int,
    "out_of_order": int,
    "throughput_msgs_per_s": (int, float),
    "deliveries_per_s": (int, float),
    "ack_latency_ms": dict,
    "e2e_latency_ms": dict,
    "projection_lag_ms": dict,
    "server_cpu_s": (int, float, type(None)),
    "server_rss_mb": (int, float, type(None)),
}


def run_bench(tmp_path: Path, *args: str, **env: str) -> dict:
    out = tmp_path / "bench.json"
    result = loopify(["bench", *args, "--json", str(out)], project_env(tmp_path / "cli", **env), timeout=BENCH_TIMEOUT_S)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr[-4000:]}"
    assert "lost / dup / out of order" in result.stdout  # the summary table
    return json.loads(out.read_text())


def run_bench_against(server: ServerProcess, tmp_path: Path) -> dict:
    """Start the server, run 2 s of chat among 4 users against it (`--url`), stop the server."""
    server.start()
    try:
        return run_bench(
            tmp_path, "--url", server.url, "--duration", "2", "--rate", "20", "--users", "4", JWT_SECRET=JWT_SECRET
        )
    finally:
        server.stop()


def assert_contract(report: dict) -> None:
    for key, kind in CONTRACT.items():
        assert key in report, f"missing {key}"
        assert isinstance(report[key], kind), f"{key} = {report[key]!r}"
    assert set(report["ack_latency_ms"]) == LATENCY
    assert set(report["e2e_latency_ms"]) == LATENCY
    assert set(report["projection_lag_ms"]) == {"p50", "p99"}


class CeilingServerProcess(ServerProcess):
    """scripts/ceiling_server.py: the bench's calibration server, nothing behind its sockets."""

    @property
    def argv(self) -> list[str]:
        return [sys.executable, str(CEILING_SERVER), "--port", str(self.port), "--jwt-secret", JWT_SECRET]


class TestBenchSmoke:
    def test_a_short_chat_run_on_its_own_server_delivers_every_message_once_in_order(self, tmp_path: Path) -> None:
        report = run_bench(tmp_path, "--scenario", "chat", "--duration", "3", "--rate", "50", "--users", "10")

        assert_contract(report)
        assert report["scenario"] == "chat"
        assert (report["lost"], report["duplicates"], report["out_of_order"]) == (0, 0, 0)
        # 150 sends were offered; every one was acked and reached the other user of its pair.
        assert report["sent"] == 150
        assert report["acked"] == report["sent"] == report["delivered"]
        assert report["ack_latency_ms"]["p50"] is not None and report["e2e_latency_ms"]["p50"] is not None
        assert report["server_cpu_s"] is not None and report["server_rss_mb"] is not None

    def test_against_a_running_server_it_mints_tokens_with_the_given_secret(self, tmp_path: Path) -> None:
        server = ServerProcess(
            project_env(tmp_path / "server", JWT_SECRET=JWT_SECRET, RATE_LIMIT_PER_MINUTE="100000")
        )
        report = run_bench_against(server, tmp_path)

        assert_contract(report)
        assert (report["lost"], report["duplicates"], report["out_of_order"]) == (0, 0, 0)
        assert report["acked"] == report["sent"] == report["delivered"] == 40
        assert report["server_cpu_s"] is None  # not a process the bench started

    def test_a_typing_run_compares_chat_with_and_without_typists_and_loses_nothing(self, tmp_path: Path) -> None:
        report = run_bench(
            tmp_path,
            "--scenario", "typing", "--duration", "2", "--rate", "20", "--users", "10",
            "--typists", "10", "--typing-every", "1",
        )  # fmt: skip

        assert_contract(report)
        assert report["scenario"] == "typing"
        assert (report["lost"], report["duplicates"], report["out_of_order"], report["errors"]) == (0, 0, 0, 0)
        assert report["acked"] == report["sent"] == report["delivered"] == 40
        assert report["typists"] == 10
        assert report["typing_frames_per_s"] > 0  # the typists really typed during the second run
        assert report["without_typing"]["throughput_msgs_per_s"] > 0
        assert report["typing_cost_basis"] == "server_cpu" and report["typing_cost_pct"] is not None

    def test_a_replay_run_seeds_a_log_and_rebuilds_every_read_model_from_it(self, tmp_path: Path) -> None:
        report = run_bench(tmp_path, "--scenario", "replay", "--events", "3000", "--conversations", "20")

        assert_contract(report)
        assert report["scenario"] == "replay"
        assert report["events"] >= 3000  # the seeded events plus each conversation's start
        assert report["events_per_s"] > 0 and report["postgres_events_per_s"] > 0
        assert report["passed"]

    def test_the_ceiling_server_carries_a_chat_run_with_every_message_acked_and_delivered_in_order(
        self, tmp_path: Path
    ) -> None:
        report = run_bench_against(CeilingServerProcess(project_env(tmp_path / "ceiling")), tmp_path)

        assert_contract(report)
        assert (report["lost"], report["duplicates"], report["out_of_order"]) == (0, 0, 0)
        assert report["acked"] == report["sent"] == report["delivered"] == 40
