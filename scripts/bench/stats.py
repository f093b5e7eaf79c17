"""Percentiles and latency summaries: exact (every sample is kept), nearest-rank.

Nearest rank (the smallest sample with at least q% of samples at or below it) always returns a
real sample, never an interpolation between two, so a p99 is a latency some message really had.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Sequence
from typing import Any

LATENCY_KEYS = ("p50", "p95", "p99", "max")
SHORT_KEYS = ("p50", "p99")
WIDE_KEYS = ("p50", "p99", "max")
DECIMALS = 3  # microsecond resolution in milliseconds: finer is noise on a shared 2-core box


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """The nearest-rank q-th percentile (0 < q <= 100) of ascending values; None when empty."""
    if not 0 < q <= 100:
        raise ValueError(f"q must be in (0, 100], not {q}")
    if not sorted_values:
        return None
    rank = math.ceil(q / 100 * len(sorted_values))
    return sorted_values[max(rank, 1) - 1]


def summarize(values: Iterable[float], keys: Sequence[str] = LATENCY_KEYS) -> dict[str, float | None]:
    """`{"p50": ..., "max": ...}` for the given keys; every value None when there are no samples."""
    ordered = sorted(values)
    summary: dict[str, float | None] = {}
    for key in keys:
        q = 100.0 if key == "max" else float(key.removeprefix("p"))
        value = percentile(ordered, q)
        summary[key] = round(value, DECIMALS) if value is not None else None
    return summary


def samples_from_bytes(chunks: Iterable[bytes]) -> array[float]:
    """Concatenate worker sample buffers (`array('d').tobytes()`) into one array."""
    merged: array[float] = array("d")
    for chunk in chunks:
        merged.frombytes(chunk)
    return merged


def rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else 0.0


def without_messages(scenario: str) -> dict[str, Any]:
    """The contract's message keys for a scenario that sends no chat messages (connections,
    replay): zero counts, latencies not measured."""
    return {
        "scenario": scenario,
        "offered_rate": 0,
        "sent": 0,
        "acked": 0,
        "delivered": 0,
        "lost": 0,
        "duplicates": 0,
        "out_of_order": 0,
        "throughput_msgs_per_s": 0.0,
        "deliveries_per_s": 0.0,
        "ack_latency_ms": summarize([], LATENCY_KEYS),
        "e2e_latency_ms": summarize([], LATENCY_KEYS),
        "projection_lag_ms": summarize([], SHORT_KEYS),
    }
