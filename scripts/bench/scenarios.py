"""The scenarios on top of connected workers: traffic steps (chat, group, and the --max search
over them) and idle connections.

A traffic step: wait until the read model has caught up, tell every worker to start at the same
instant with its share of the rate, each phased so that the workers' sends interleave (see
`_phases`), gather what was acked, hand each worker the messages its
devices should get, gather what they got. Correctness is judged per device; latencies are
pooled over all workers.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from scripts.bench.clients import ACK_TIMEOUT_S, SEND_OVERRUN_S
from scripts.bench.metering import BYTES_PER_MB, Meter
from scripts.bench.plan import Plan
from scripts.bench.pool import WorkerPool
from scripts.bench.progress import Progress
from scripts.bench.provision import wait_for_projection
from scripts.bench.report import PROJECTION_LAG_METHOD
from scripts.bench.stats import LATENCY_KEYS, SHORT_KEYS, WIDE_KEYS, rate, samples_from_bytes, summarize, without_messages

START_LEAD_S = 0.5  # every worker has its command before the common start instant
REPLY_MARGIN_S = 30.0  # pickling a step's acks and receipts across processes, on a busy box
E2E_P99_TARGET_MS = 100.0  # the --max search's bar: p99 send->receive under 100 ms
# Warm-up: each sender once at this rate at most (a slow server must not fail its warm-up),
# and never for longer than this.
WARMUP_RATE = 200.0
WARMUP_MAX_S = 30.0
MIN_SEARCH_RATE = 10.0  # msg/s: a server that cannot meet the bar here is broken, not slow
CONNECTIONS_SETTLE_S = 2.0  # let the server finish registering the last sockets before measuring memory
NS_PER_S = 1e9
NS_PER_MS = 1e6


@dataclass
class Traffic:
    scenario: str
    plan: Plan
    pool: WorkerPool
    meter: Meter
    health_urls: list[str]
    conversation_ids: dict[int, str]
    duration_s: float
    drain_timeout_s: float
    out: TextIO
    extra: dict[str, Any] = field(default_factory=dict)  # scenario keys to add to every result

    def warm_up(self, offered_rate: float) -> dict[str, Any]:
        """Every sender sends once, slowly, before anything is measured: the first message of a
        conversation loads its aggregate and warms the server's caches, which a steady state
        has already done. Judged like any step (a lost message fails the run), not reported."""
        rate = min(offered_rate, WARMUP_RATE)
        duration = min(self.plan.total_slots() / rate, WARMUP_MAX_S)
        return self.step(0, rate, duration, label="warm-up")

    def step(self, number: int, offered_rate: float, duration_s: float | None = None, label: str = "") -> dict[str, Any]:
        wait_for_projection(self.health_urls)
        name = label or f"{self.scenario} @{offered_rate:g}/s"
        with Progress(name, self.pool, self.meter, self.health_urls, self.out) as progress:
            self.meter.begin()
            duration, drain = duration_s or self.duration_s, self.drain_timeout_s
            start_ns = time.monotonic_ns() + int(START_LEAD_S * NS_PER_S)
            shares = self._shares()
            runs = self.pool.request(
                [
                    {"op": "run", "step": number, "rate": offered_rate * share, "start_ns": start_ns,
                     "phase_ns": phase_ns, "duration": duration}
                    for share, phase_ns in zip(shares, self._phases(offered_rate, shares), strict=True)
                ],
                duration + START_LEAD_S + SEND_OVERRUN_S + ACK_TIMEOUT_S + REPLY_MARGIN_S,
                progress.tick,
            )
            acks = [ack for run in runs for ack in run["acks"]]
            verifies = self.pool.request(
                [{"op": "verify", "expected": expected, "drain_timeout": drain} for expected in self._expected(acks)],
                drain + REPLY_MARGIN_S,
                progress.tick,
            )
            cost = self.meter.end()
        result = self._result(offered_rate, duration, start_ns, runs, verifies, acks, progress.lag.samples)
        result.update(server_cpu_s=cost.server_cpu_s, server_rss_mb=cost.server_rss_mb)
        result.update(infra_cpu_s=cost.infra_cpu_s, infra_rss_mb=cost.infra_rss_mb, bench_cpu_s=cost.bench_cpu_s)
        return result

    def _shares(self) -> list[float]:
        total = self.plan.total_slots()
        return [len(self.plan.sender_slots(worker)) / total for worker in range(self.plan.workers)]

    def _phases(self, offered_rate: float, shares: list[float]) -> list[int]:
        """Each worker's first send, after the common start: worker w of W is w/W of its own
        interval late. With equal shares the workers' sends then interleave into one schedule
        of `offered_rate`, a send every 1/rate; started in phase, W workers sent in bursts of W
        at once (two messages to the same 1,000-member group together, for instance)."""
        workers = len(shares)
        return [
            int(worker / workers * NS_PER_S / (offered_rate * share)) if offered_rate > 0 and share > 0 else 0
            for worker, share in enumerate(shares)
        ]

    def _expected(self, acks: list[tuple[Any, ...]]) -> list[list[tuple[str, str, str]]]:
        """Per worker: the acked messages of every conversation one of its users is in."""
        workers_of: dict[str, set[int]] = {}
        for conversation in self.plan.conversations:
            cid = self.conversation_ids[conversation.key]
            workers_of[cid] = {self.plan.worker_of(user) for user in conversation.members}
        expected: list[list[tuple[str, str, str]]] = [[] for _ in range(self.plan.workers)]
        for message_id, cid, _seq, sender, _due, _acked in acks:
            for worker in workers_of.get(cid, ()):
                expected[worker].append((message_id, cid, sender))
        return expected

    def _result(
        self,
        offered_rate: float,
        duration_s: float,
        start_ns: int,
        runs: list[dict[str, Any]],
        verifies: list[dict[str, Any]],
        acks: list[tuple[Any, ...]],
        lag_samples: list[int],
    ) -> dict[str, Any]:
        receipts = _merge_receipts(verify["receipts"] for verify in verifies)
        ack_at = {ack[0]: (ack[4], ack[5]) for ack in acks}  # id -> (due, acked)
        projection_ms = [
            max(0, receipts[mid][0] - acked) / NS_PER_MS for mid, (_, acked) in ack_at.items() if mid in receipts
        ]
        last_delivery_ms = [(receipts[mid][1] - due) / NS_PER_MS for mid, (due, _) in ack_at.items() if mid in receipts]
        last_ack = max((ack[5] for ack in acks), default=start_ns)
        last_receipt = max((last for _, last in receipts.values()), default=start_ns)
        errors = sum((Counter(verify["errors"]) for verify in verifies), Counter())
        disconnects = sum((Counter(verify["disconnects"]) for verify in verifies), Counter())
        total = {key: sum(run[key] for run in runs) for key in ("planned", "sent", "acked", "unacked")}
        counted = ("delivered", "lost", "duplicates", "out_of_order", "unexpected", "late")
        checks = {key: sum(verify[key] for verify in verifies) for key in counted}
        e2e = summarize(samples_from_bytes(verify["e2e_ms"] for verify in verifies), LATENCY_KEYS)
        result: dict[str, Any] = {
            "scenario": self.scenario,
            "offered_rate": offered_rate,
            "sent": total["sent"],
            "acked": total["acked"],
            "delivered": checks["delivered"],
            "lost": checks["lost"],
            "duplicates": checks["duplicates"],
            "out_of_order": checks["out_of_order"],
            # Sustained rates: over the send window, or until the last ack / delivery if later.
            "throughput_msgs_per_s": rate(total["acked"], max(duration_s, (last_ack - start_ns) / NS_PER_S)),
            "deliveries_per_s": rate(checks["delivered"], max(duration_s, (last_receipt - start_ns) / NS_PER_S)),
            "ack_latency_ms": summarize(samples_from_bytes(run["ack_ms"] for run in runs), LATENCY_KEYS),
            "e2e_latency_ms": e2e,
            "projection_lag_ms": summarize(projection_ms, SHORT_KEYS),
            "server_cpu_s": None,
            "server_rss_mb": None,
            **self.extra,
            "duration_s": duration_s,
            "planned": total["planned"],
            "unacked": total["unacked"],
            "errors": sum(errors.values()),
            "error_codes": dict(errors),
            "disconnects": sum(disconnects.values()),
            "unexpected": checks["unexpected"],
            "late_deliveries": checks["late"],
            "generator_lag_ms": summarize(samples_from_bytes(run["generator_lag_ms"] for run in runs), WIDE_KEYS),
            "projection_lag_positions": summarize(lag_samples, WIDE_KEYS),
            "projection_lag_method": PROJECTION_LAG_METHOD,
        }
        if self.scenario == "group":
            result["fanout_last_delivery_ms"] = summarize(last_delivery_ms, WIDE_KEYS)
        result["passed"] = is_correct(result)
        result["within_target"] = result["passed"] and within_target(result)
        return result


def is_correct(result: dict[str, Any]) -> bool:
    """Every acked message reached every device once and in order, and nothing failed."""
    return is_lossless(result) and all(result[key] == 0 for key in ("errors", "unacked", "disconnects"))


def is_lossless(result: dict[str, Any]) -> bool:
    """No acked message lost, duplicated or out of order (errors under overload are a --max stop
    signal; these never are acceptable)."""
    return all(result[key] == 0 for key in ("lost", "duplicates", "out_of_order"))


def within_target(result: dict[str, Any]) -> bool:
    """The --max bar: the whole offered load went out, and p99 send->receive < 100 ms."""
    p99 = result["e2e_latency_ms"]["p99"]
    return result["sent"] == result["planned"] and p99 is not None and p99 < E2E_P99_TARGET_MS


def search_max(traffic: Traffic, first_rate: float, increment: float, ceiling: float) -> list[dict[str, Any]]:
    """Step the offered rate up from `first_rate` by `increment` while each step meets the target
    (correct and p99 send->receive < 100 ms), up to `ceiling`. A p99 is one slow moment on a
    shared 2-core box, so a rate that misses is tried once more before the search stops there;
    then the rate halfway back to the last one that passed is tried, so the answer is found to
    half an increment. When the first rate already misses (twice), halve it until one meets the
    target (down to MIN_SEARCH_RATE), so a slow server still gets a number. Stops at once on a
    lost, duplicated or out-of-order message. Returns every step (the result takes the highest
    passing one)."""
    steps: list[dict[str, Any]] = []

    def attempt(offered: float) -> dict[str, Any]:
        steps.append(traffic.step(len(steps) + 1, offered))  # step 0 is the warm-up
        if not steps[-1]["within_target"] and is_lossless(steps[-1]):
            steps.append(traffic.step(len(steps) + 1, offered))  # confirm the miss
        return steps[-1]

    offered = first_rate
    result = attempt(offered)
    if not result["within_target"]:
        while is_lossless(result) and not result["within_target"] and offered / 2 >= MIN_SEARCH_RATE:
            offered /= 2  # bounded: log2(first_rate / MIN_SEARCH_RATE) halvings at most
            result = attempt(offered)
        return steps
    while result["within_target"] and offered + increment <= ceiling:  # bounded by the ceiling
        offered += increment
        result = attempt(offered)
    if not result["within_target"] and is_lossless(result):
        attempt(offered - increment / 2)
    return steps


def _merge_receipts(parts: Any) -> dict[str, tuple[int, int]]:
    merged: dict[str, tuple[int, int]] = {}
    for part in parts:
        for message_id, (first, last) in part.items():
            seen = merged.get(message_id)
            merged[message_id] = (first, last) if seen is None else (min(seen[0], first), max(seen[1], last))
    return merged


# ---- typing: what typing traffic costs chat ------------------------------------------------------


def typing_result(
    run_chat: Callable[[], list[dict[str, Any]]],
    set_typing: Callable[[float], None],
    typing_frames: Callable[[], int],
    every_s: float,
    typists: int,
    *,
    searched: bool,
) -> dict[str, Any]:
    """The same chat load (one step, or the --max search) twice on the same sockets: first with
    the typists connected and silent, then with every typist refreshing `typing` every
    `every_s`. The cost of typing is the chat throughput it takes away (--max: highest passing
    rates) or, at one fixed rate, the server CPU it adds per chat message."""
    set_typing(0)
    baseline = run_chat()
    set_typing(every_s)
    time.sleep(every_s + TYPING_SETTLE_S)  # every typist has started (and been gated) once
    frames_before, began = typing_frames(), time.monotonic()
    with_typing = run_chat()
    frames_per_s = (typing_frames() - frames_before) / max(1e-9, time.monotonic() - began)
    set_typing(0)
    before, after = _typing_pick(baseline), _typing_pick(with_typing)
    result = dict(after)
    cost, basis = _typing_cost(before, after, searched=searched)
    result.update(
        typists=typists,
        typing_every_s=every_s,
        typing_frames_per_s=round(frames_per_s, 1),
        typing_cost_pct=cost,
        typing_cost_basis=basis,
        without_typing={key: before.get(key) for key in TYPING_COMPARED},
        passed=bool(before.get("passed")) and bool(after.get("passed")),
    )
    return result


TYPING_SETTLE_S = 1.0
TYPING_COMPARED = (
    "offered_rate",
    "throughput_msgs_per_s",
    "ack_latency_ms",
    "e2e_latency_ms",
    "projection_lag_ms",
    "server_cpu_s",
    "errors",
    "lost",
    "passed",
)


def _typing_pick(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """One step: itself; a --max search: its highest passing step (else the last)."""
    passing = [step for step in steps if step["within_target"]]
    best = dict(max(passing, key=lambda step: step["offered_rate"]) if passing else steps[-1])
    best["passed"] = bool(passing) and all(is_lossless(step) for step in steps) if len(steps) > 1 else best["passed"]
    return best


def _typing_cost(before: dict[str, Any], after: dict[str, Any], *, searched: bool) -> tuple[float | None, str]:
    if searched:
        if not before.get("within_target") or not after.get("within_target"):
            return None, "max_rate"
        return round(100 * (1 - after["offered_rate"] / before["offered_rate"]), 1), "max_rate"
    cpu_before, cpu_after = before.get("server_cpu_s"), after.get("server_cpu_s")
    if not cpu_before or cpu_after is None:
        return None, "server_cpu (unknown with --url)"
    return round(100 * (cpu_after - cpu_before) / cpu_before, 1), "server_cpu"


# ---- connections ---------------------------------------------------------------------------------


def connections_result(
    connect: Callable[[], list[dict[str, Any]]],
    heartbeat: Callable[[], list[dict[str, Any]]],
    meter: Meter,
    wanted: int,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Open `wanted` idle authenticated sockets; memory per connection from the api processes'
    RSS before and after (psutil), and one heartbeat round trip per socket to prove they live."""
    meter.begin()
    before = meter.api_rss_bytes()
    began = time.monotonic()
    connected = connect()
    opened_s = time.monotonic() - began
    time.sleep(CONNECTIONS_SETTLE_S)  # a fixed pause, not a wait for a condition: memory has no "done" signal
    after = meter.api_rss_bytes()
    beats = heartbeat()
    cost = meter.end()
    opened = sum(part["connected"] for part in connected)
    failures = sum((Counter(part["failures"]) for part in connected), Counter())
    alive = sum(beat["alive"] for beat in beats)
    disconnects = sum((Counter(beat["disconnects"]) for beat in beats), Counter())
    kb = None
    if before is not None and after is not None and opened:
        kb = round((after - before) / opened / 1024, 1)
    result: dict[str, Any] = {
        **without_messages("connections"),  # no chat messages: see the keys below
        "server_cpu_s": cost.server_cpu_s,
        "server_rss_mb": cost.server_rss_mb,
        **extra,
        "connections": wanted,
        "connected": opened,
        "connect_failures": dict(failures),
        "alive": alive,
        # Every socket's heartbeat at once: a liveness check, its latency is a burst's queueing.
        "heartbeat_ms": summarize(samples_from_bytes(beat["heartbeat_ms"] for beat in beats), WIDE_KEYS),
        "disconnects": sum(disconnects.values()),
        "connect_s": round(opened_s, 1),
        "connect_ms": summarize(samples_from_bytes(part["connect_ms"] for part in connected), WIDE_KEYS),
        "api_rss_mb_before": round(before / BYTES_PER_MB, 1) if before is not None else None,
        "api_rss_mb_after": round(after / BYTES_PER_MB, 1) if after is not None else None,
        "kb_per_connection": kb,
        "infra_cpu_s": cost.infra_cpu_s,
        "infra_rss_mb": cost.infra_rss_mb,
        "bench_cpu_s": cost.bench_cpu_s,
    }
    result["passed"] = opened == wanted and alive == wanted and not disconnects
    return result
