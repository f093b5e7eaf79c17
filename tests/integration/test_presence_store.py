"""The presence store on a real Redis: devices, refreshes in chunks, expiry and the sweep."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis

import pytest

from infrastructure import presence
from infrastructure.presence import EXPIRIES_KEY, REFRESH_CHUNK, PresenceStore, online_key, socket_key
from infrastructure.redis_mux import RedisMux

T = TypeVar("T")


@pytest.fixture(params=["redis-py", "mux"])
def run_with_store(request: pytest.FixtureRequest, redis_url: str) -> Callable[..., Any]:
    """Runs a test body with a store on either client the server uses, and a redis-py client
    to look at the keys."""

    def run_body(body: Callable[[PresenceStore, aioredis.Redis], Awaitable[T]]) -> T:
        async def run() -> T:
            client = aioredis.Redis.from_url(redis_url)
            mux = RedisMux(redis_url)
            try:
                return await body(PresenceStore(client if request.param == "redis-py" else mux), client)
            finally:
                await client.aclose()
                await mux.aclose()

        return asyncio.run(run())

    return run_body


def fresh_users(count: int) -> list[str]:
    run = uuid.uuid4().hex[:8]
    return [f"presence-{run}-{i}" for i in range(count)]


def test_a_refresh_of_more_devices_than_one_chunk_extends_every_device(run_with_store: Callable[..., Any]) -> None:
    users = fresh_users(REFRESH_CHUNK * 2 + 7)
    devices = [(user, f"{user}-phone") for user in users]

    async def body(store: PresenceStore, client: aioredis.Redis) -> list[float | None]:
        before = time.time()
        await store.refresh(devices)
        scores = [await client.zscore(online_key(user), socket) for user, socket in devices]
        owners = {await client.get(socket_key(socket)) for _, socket in devices[:: REFRESH_CHUNK // 2]}
        assert owners == {user.encode() for user, _ in devices[:: REFRESH_CHUNK // 2]}
        assert all([await client.zscore(EXPIRIES_KEY, user) for user in users[-3:]])
        return [score - before if score is not None else None for score in scores]

    expiries = run_with_store(body)
    assert all(e is not None and presence.TTL_S - 5 < e <= presence.TTL_S + 1 for e in expiries)


def test_the_last_device_to_disconnect_takes_the_user_offline(run_with_store: Callable[..., Any]) -> None:
    (user,) = fresh_users(1)

    async def body(store: PresenceStore, client: aioredis.Redis) -> tuple[bool, bool, bool, bool]:
        first = await store.connect(user, "phone")
        second = await store.connect(user, "laptop")
        await store.refresh([(user, "phone"), (user, "laptop")])
        phone_gone = await store.disconnect(user, "phone")
        laptop_gone = await store.disconnect(user, "laptop")
        return first, second, phone_gone, laptop_gone

    assert run_with_store(body) == (True, False, False, True)


def test_a_device_that_stops_refreshing_is_swept_once_its_entry_expires(run_with_store: Callable[..., Any]) -> None:
    users = fresh_users(2)

    async def body(store: PresenceStore, client: aioredis.Redis) -> list[str]:
        for user in users:
            await store.connect(user, f"{user}-phone")
        # The first user's node crashed long ago: its entry expired; the second is still refreshed.
        stale = time.time() - 1
        await client.zadd(online_key(users[0]), {f"{users[0]}-phone": stale})
        await client.zadd(EXPIRIES_KEY, {users[0]: stale})
        await store.refresh([(users[1], f"{users[1]}-phone")])
        return await store.sweep()

    gone = run_with_store(body)
    assert users[0] in gone and users[1] not in gone
