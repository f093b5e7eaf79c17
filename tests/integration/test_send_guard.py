"""The send guard against a real Redis: the sends of one event-loop iteration share one script
call each side of the commit, every send still gets its own answer, and a record that nobody
awaits reaches Redis before the node's next call."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from infrastructure.redis_guards import TYPING_EXPIRIES_KEY, SendGuard, dedup_key
from infrastructure.redis_mux import RedisMux
from projections.read_your_writes import write_position_key


def _counting_scripts(mux: RedisMux) -> list[str]:
    """Record the name of every script call `mux` writes (EVAL the first time, then EVALSHA)."""
    calls: list[str] = []
    send: Callable[..., asyncio.Future[Any]] = mux.send

    def counted(*args: Any) -> asyncio.Future[Any]:
        if args[0] in ("EVALSHA", "EVAL"):
            calls.append(args[0])
        return send(*args)

    mux.send = counted  # type: ignore[method-assign]
    return calls


def _ids(count: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(count)]


def test_the_sends_of_one_iteration_are_admitted_by_one_script_call(redis_url: str) -> None:
    conversation, alice, bob = _ids(3)

    async def run() -> tuple[list[bool], list[str]]:
        mux = RedisMux(redis_url)
        guard = SendGuard(mux, per_minute=3)
        try:
            await mux.ping()
            calls = _counting_scripts(mux)
            admissions = await asyncio.gather(
                *(guard.admit(conversation, alice, None) for _ in range(4)), guard.admit(conversation, bob, None)
            )
            return [admission.allowed for admission in admissions], calls
        finally:
            await mux.aclose()

    allowed, calls = asyncio.run(run())
    assert allowed == [True, True, True, False, True]  # Alice's fourth is over her 3 a minute
    assert len(calls) == 1


def test_a_retry_admitted_with_other_sends_gets_the_ack_already_sent(redis_url: str) -> None:
    conversation, alice, bob = _ids(3)
    ack = orjson.dumps({"message": {"id": "m-1"}}).decode()

    async def run() -> list[str | None]:
        mux = RedisMux(redis_url)
        guard = SendGuard(mux, per_minute=100)
        try:
            guard.record(conversation, alice, position=7, retry_key=dedup_key(conversation, alice, "c-1"), ack=ack)
            admissions = await asyncio.gather(
                guard.admit(conversation, bob, "c-1"),  # the same client id from someone else: new
                guard.admit(conversation, alice, "c-1"),  # a retry
                guard.admit(conversation, alice, "c-2"),
            )
            return [admission.cached_ack for admission in admissions]
        finally:
            await mux.aclose()

    assert asyncio.run(run()) == [None, ack, None]


def test_a_record_nobody_awaits_is_in_redis_for_the_nodes_next_call(redis_url: str) -> None:
    conversation, alice, bob = _ids(3)
    ack = orjson.dumps({"message": {"id": "m-2"}}).decode()

    async def run() -> tuple[bytes | None, bytes | None, bytes | None, Any]:
        mux = RedisMux(redis_url)
        guard = SendGuard(mux, per_minute=100)
        try:
            await mux.execute("ZADD", TYPING_EXPIRIES_KEY, 1, f"{conversation}|{alice}")
            calls = _counting_scripts(mux)
            guard.record(conversation, alice, position=41, retry_key=dedup_key(conversation, alice, "c-9"), ack=ack)
            guard.record(conversation, alice, position=40, retry_key=None, ack=None)  # an older one
            guard.record(conversation, bob, position=42, retry_key=None, ack=None)
            # Read right away, without waiting for the records' reply: they are ahead on the link.
            positions = await asyncio.gather(mux.get(write_position_key(alice)), mux.get(write_position_key(bob)))
            kept = await mux.get(dedup_key(conversation, alice, "c-9"))
            typing = await mux.execute("ZSCORE", TYPING_EXPIRIES_KEY, f"{conversation}|{alice}")
            assert len(calls) == 1
            return positions[0], positions[1], kept, typing
        finally:
            await mux.aclose()

    alice_position, bob_position, kept, typing = asyncio.run(run())
    assert (alice_position, bob_position) == (b"41", b"42")  # the larger position is kept
    assert kept == ack.encode()
    assert typing is None  # sending ended Alice's typing


def test_a_record_redis_refuses_is_logged_and_raises_nowhere(caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> None:
        mux = RedisMux("redis://127.0.0.1:1")  # nothing listens there
        guard = SendGuard(mux, per_minute=100)
        try:
            guard.record(str(uuid.uuid4()), "alice", position=1, retry_key=None, ack=None)
            for _ in range(100):
                await asyncio.sleep(0.01)
                if caplog.records:
                    break
        finally:
            await mux.aclose()

    with caplog.at_level(logging.WARNING, logger="infrastructure.redis_guards"):
        asyncio.run(run())
    assert any("did not record it" in record.getMessage() for record in caplog.records)


def test_an_admission_redis_refuses_fails_every_send_of_the_iteration() -> None:
    async def run() -> list[BaseException | Any]:
        mux = RedisMux("redis://127.0.0.1:1")
        guard = SendGuard(mux, per_minute=100)
        try:
            return await asyncio.gather(
                guard.admit("c", "alice", None), guard.admit("c", "bob", "x"), return_exceptions=True
            )
        finally:
            await mux.aclose()

    outcomes = asyncio.run(run())
    assert [type(outcome).__name__ for outcome in outcomes] == ["ConnectionError", "ConnectionError"]
