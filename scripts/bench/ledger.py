"""What one worker's devices received, and the verdict on it: lost, duplicated, out of order.

Pure bookkeeping (no I/O), so the rules are unit-tested on their own:
- a duplicate is a message id a device already received (this step or the one before);
- out of order is a new message whose seq is not above the highest the device has seen in its
  conversation (seq is gapless per conversation; a device skips its own user's messages, which
  it has from the ack, so it sees a strictly increasing subsequence);
- lost is an acked message of a device's conversation, sent by another user, never received
  by the end of the drain.
A bench message's `clientMessageId` carries its step and due time (monotonic ns), so the
receiver measures send->receive without asking the sender.
"""

from __future__ import annotations

import asyncio
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

NS_PER_MS = 1_000_000

Expected = tuple[str, str, str]  # message id, conversation id, sender


@dataclass(eq=False)
class Device:
    """One socket of one user (the bench gives each user one device)."""

    user: str
    ws: Any  # a socket_client.BenchSocket
    conversations: frozenset[str]
    last_seq: dict[str, int] = field(default_factory=dict)  # per conversation, highest seq received
    received: dict[str, int] = field(default_factory=dict)  # message id -> receipt time, this step
    previous: dict[str, int] = field(default_factory=dict)  # the step before: a late duplicate is still one

    def new_step(self) -> None:
        self.previous, self.received = self.received, {}


@dataclass
class Step:
    number: int
    sent: int = 0
    planned: int = 0
    outstanding: int = 0  # sent, neither acked nor refused yet
    sending_done: bool = False
    acks: list[tuple[str, str, int, str, int, int]] = field(default_factory=list)  # id, conv, seq, sender, due, acked
    ack_ms: array[float] = field(default_factory=lambda: array("d"))
    generator_lag_ms: array[float] = field(default_factory=lambda: array("d"))
    e2e_ms: array[float] = field(default_factory=lambda: array("d"))
    # message id -> (first, last) receipt here. Tuples of ints, not lists: the collector stops
    # tracking such a tuple the first time it sees it, so a long step's hundreds of thousands
    # of receipts never make a worker's full collections longer (a list per receipt did: 60-130
    # ms each in a one-minute step at 3,000 msg/s, and the worker's receipt times with them).
    receipts: dict[str, tuple[int, int]] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    out_of_order: int = 0
    late: int = 0  # deliveries of another step's messages (or of messages the bench did not send)
    answered: asyncio.Event = field(default_factory=asyncio.Event)


def client_message_id(step: int, due_ns: int, worker: int, request: int) -> str:
    return f"{step}.{due_ns}.{worker}.{request}"


def parse_client_message_id(value: Any) -> tuple[int, int] | None:
    """(step, due time in ns) of a bench message; None for anything the bench did not send."""
    if not isinstance(value, str):
        return None
    parts = value.split(".")
    if len(parts) != 4:
        return None
    try:
        return int(parts[0]), int(parts[1])
    except ValueError:
        return None


def record_delivery(step: Step, device: Device, data: dict[str, Any], now_ns: int) -> bool:
    """Note one `message_received`; True when it is a first delivery of this step's message."""
    message = data.get("message") or {}
    message_id, seq, cid = message.get("id"), message.get("seq"), data.get("conversationId")
    if not isinstance(seq, int) or not isinstance(message_id, str):
        step.errors["malformed message_received"] += 1
        return False
    if message_id in device.received or message_id in device.previous:
        step.duplicates += 1
        return False
    device.received[message_id] = now_ns
    if seq <= device.last_seq.get(cid, 0):
        step.out_of_order += 1
    else:
        device.last_seq[cid] = seq
    origin = parse_client_message_id(message.get("clientMessageId"))
    if origin is None or origin[0] != step.number:
        step.late += 1
        return False
    step.e2e_ms.append((now_ns - origin[1]) / NS_PER_MS)
    seen = step.receipts.get(message_id)
    step.receipts[message_id] = (now_ns, now_ns) if seen is None else (seen[0], now_ns)
    return True


def due_deliveries(devices: list[Device], expected: list[Expected]) -> list[tuple[Device, str]]:
    """(device, message id) for every acked message a device should get: each message of one of
    its conversations that another user sent."""
    by_conversation: dict[str, list[tuple[str, str]]] = {}
    for message_id, cid, sender in expected:
        by_conversation.setdefault(cid, []).append((message_id, sender))
    return [
        (device, message_id)
        for device in devices
        for cid in device.conversations
        for message_id, sender in by_conversation.get(cid, ())
        if sender != device.user
    ]


def still_missing(due: list[tuple[Device, str]]) -> list[tuple[Device, str]]:
    return [(device, message_id) for device, message_id in due if message_id not in device.received]


def verdict(step: Step, expected: list[Expected], wanted: int, lost: int) -> dict[str, Any]:
    """The step's counts once the drain is over: `wanted` deliveries were due, `lost` never came."""
    expected_ids = {message_id for message_id, _, _ in expected}
    return {
        "expected": wanted,
        "delivered": wanted - lost,
        "lost": lost,
        "duplicates": step.duplicates,
        "out_of_order": step.out_of_order,
        "unexpected": sum(1 for message_id in step.receipts if message_id not in expected_ids),
        "late": step.late,
        "errors": dict(step.errors),  # the run's, plus any found while draining
        "e2e_ms": step.e2e_ms.tobytes(),
        "receipts": step.receipts,
    }
