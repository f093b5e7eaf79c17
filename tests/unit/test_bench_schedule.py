"""The bench's open-loop schedule: the workers' sends interleave into one stream at the offered
rate, so a rate of R is a send every 1/R, never W sends at once; and a step's end, which waits
for its last deliveries before the reply."""

from __future__ import annotations

import asyncio
import io
import time

import pytest

from scripts.bench.clients import COUNTER_NAMES, SETTLE_S, Worker, due_ns
from scripts.bench.plan import Plan, plan_chat, plan_group
from scripts.bench.scenarios import Traffic

NS_PER_S = 1_000_000_000


def traffic(plan: Plan) -> Traffic:
    # Only the plan matters for the schedule; nothing here talks to a worker or a server.
    return Traffic("chat", plan, None, None, [], {}, 10.0, 10.0, io.StringIO())  # type: ignore[arg-type]


def due_times(traffic: Traffic, rate: float, duration_s: float) -> list[int]:
    """Every send's due time, from the common start, as the workers compute them."""
    dues = []
    shares = traffic._shares()
    for share, phase in zip(shares, traffic._phases(rate, shares), strict=True):
        dues += [due_ns(0, phase, rate * share, n) for n in range(int(rate * share * duration_s))]
    return sorted(dues)


@pytest.mark.parametrize("workers", [1, 2, 4])  # equal shares of the 1,000 senders
def test_two_messages_a_second_to_one_group_are_half_a_second_apart(workers: int) -> None:
    schedule = due_times(traffic(plan_group("run", None, 1, 1000, workers, 1)), 2.0, 10.0)

    assert len(schedule) == 20
    gaps = {round((later - earlier) / NS_PER_S, 6) for earlier, later in zip(schedule, schedule[1:])}
    assert gaps == {0.5}


def test_a_chat_rate_is_one_send_every_interval_across_the_workers() -> None:
    schedule = due_times(traffic(plan_chat("run", 1000, None, 2, 1)), 1000.0, 1.0)

    assert len(schedule) == 1000
    gaps = [later - earlier for earlier, later in zip(schedule, schedule[1:])]
    assert min(gaps) >= NS_PER_S // 1000 - 1 and max(gaps) <= NS_PER_S // 1000 + 1


def test_no_worker_has_a_phase_at_a_rate_of_zero() -> None:
    group = traffic(plan_group("run", None, 1, 1000, 2, 1))
    assert group._phases(0.0, group._shares()) == [0, 0]


# ---- the step's end: the reply waits for the last deliveries ------------------------------------


def settle_seconds(last_delivery_ns: int) -> float:
    worker = Worker(0, None, [0] * len(COUNTER_NAMES))  # type: ignore[arg-type]
    worker.last_delivery_ns = last_delivery_ns
    began = time.monotonic()
    asyncio.run(worker._settle())
    return time.monotonic() - began


def test_a_worker_whose_deliveries_have_paused_replies_at_once() -> None:
    assert settle_seconds(time.monotonic_ns() - int(10 * SETTLE_S * NS_PER_S)) < SETTLE_S


def test_a_delivery_just_now_holds_the_reply_until_deliveries_pause() -> None:
    assert settle_seconds(time.monotonic_ns()) >= SETTLE_S * 0.99
