"""The bench's output: the JSON result (contract keys first, then scenario keys) and the
summary table a person reads.

Contract (issue 5 / design.md): scenario, offered_rate, sent, acked, delivered, lost,
duplicates, out_of_order, throughput_msgs_per_s, deliveries_per_s, ack_latency_ms
{p50,p95,p99,max}, e2e_latency_ms {p50,p95,p99,max}, projection_lag_ms {p50,p99},
server_cpu_s, server_rss_mb. Latencies are milliseconds; None (JSON null) where not measured.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO

CONTRACT_KEYS = (
    "scenario",
    "offered_rate",
    "sent",
    "acked",
    "delivered",
    "lost",
    "duplicates",
    "out_of_order",
    "throughput_msgs_per_s",
    "deliveries_per_s",
    "ack_latency_ms",
    "e2e_latency_ms",
    "projection_lag_ms",
    "server_cpu_s",
    "server_rss_mb",
)
PROJECTION_LAG_METHOD = (
    "per message: first delivery to a recipient minus the sender's ack (the ack leaves after the "
    "commit, the delivery after the projection commits and the relay publishes), floored at 0"
)


def write_json(result: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(result, indent=2) + "\n")


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:,.2f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _latency(summary: dict[str, Any] | None) -> str:
    if not summary:
        return "-"
    return "  ".join(f"{key} {_number(value)}" for key, value in summary.items())


def print_table(result: dict[str, Any], out: TextIO) -> None:
    rows: list[tuple[str, str]] = [
        ("scenario", str(result["scenario"])),
        ("offered rate", f"{_number(result['offered_rate'])} msg/s"),
        ("sent / acked", f"{_number(result['sent'])} / {_number(result['acked'])}"),
        ("delivered", _number(result["delivered"])),
        ("lost / dup / out of order", f"{result['lost']} / {result['duplicates']} / {result['out_of_order']}"),
        ("errors / unacked", f"{_number(result.get('errors'))} / {_number(result.get('unacked'))}"),
        ("throughput", f"{_number(result['throughput_msgs_per_s'])} msg/s"),
        ("deliveries", f"{_number(result['deliveries_per_s'])} /s"),
        ("ack latency ms", _latency(result["ack_latency_ms"])),
        ("send->receive ms", _latency(result["e2e_latency_ms"])),
        ("projection lag ms", _latency(result["projection_lag_ms"])),
    ]
    for key, label in (
        ("fanout_last_delivery_ms", "last delivery ms"),
        ("projection_lag_positions", "projection lag events"),
        ("generator_lag_ms", "generator lag ms"),
        ("connect_ms", "connect ms"),
        ("heartbeat_ms", "heartbeat ms"),
    ):
        if key in result:
            rows.append((label, _latency(result[key])))
    for key, label in (
        ("connected", "connected"),
        ("alive", "alive"),
        ("kb_per_connection", "KB per connection"),
        ("typists", "typists"),
        ("typing_frames_per_s", "typing frames /s"),
        ("events", "events replayed"),
        ("replay_s", "replay s"),
        ("events_per_s", "replay events/s"),
        ("postgres_events_per_s", "postgres build events/s"),
    ):
        if key in result:
            rows.append((label, _number(result[key])))
    if "without_typing" in result:
        before = result["without_typing"]
        rows += [
            ("without typing: throughput", f"{_number(before['throughput_msgs_per_s'])} msg/s"),
            ("without typing: send->receive", _latency(before["e2e_latency_ms"])),
            ("without typing: server cpu s", _number(before["server_cpu_s"])),
            ("typing cost", f"{_number(result['typing_cost_pct'])} % ({result['typing_cost_basis']})"),
        ]
    rows += [
        ("server cpu s / rss MB", f"{_number(result['server_cpu_s'])} / {_number(result['server_rss_mb'])}"),
        ("postgres+redis cpu s / rss MB", f"{_number(result.get('infra_cpu_s'))} / {_number(result.get('infra_rss_mb'))}"),
        ("bench clients cpu s", _number(result.get("bench_cpu_s"))),
        ("result", "PASS" if result.get("passed") else "FAIL"),
    ]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}", file=out)


def print_steps(steps: list[dict[str, Any]], out: TextIO) -> None:
    """The --max search, one line per rate tried."""
    header = ("offered", "msg/s", "e2e p50", "e2e p99", "ack p99")
    print("  ".join(f"{name:>8}" for name in header) + f"  {'lost':>5}  {'errors':>6}  ok", file=out)
    for step in steps:
        e2e, ack = step["e2e_latency_ms"], step["ack_latency_ms"]
        print(
            f"{_number(step['offered_rate']):>8}  {_number(step['throughput_msgs_per_s']):>8}  {_number(e2e['p50']):>8}  "
            f"{_number(e2e['p99']):>8}  {_number(ack['p99']):>8}  {step['lost']:>5}  {_number(step.get('errors')):>6}  "
            f"{'yes' if step.get('within_target') else 'no'}",
            file=out,
        )
