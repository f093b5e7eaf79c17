"""The pipelined Redis connection of the hot path, against a real Redis (and one that hangs)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from infrastructure.redis_mux import RedisMux


def test_thousands_of_concurrent_calls_each_get_their_own_reply(redis_url: str) -> None:
    prefix = uuid.uuid4().hex

    async def run() -> list[bytes | None]:
        mux = RedisMux(redis_url)
        try:
            await asyncio.gather(*(mux.set(f"{prefix}:{i}", i) for i in range(2000)))
            return await asyncio.gather(*(mux.get(f"{prefix}:{i}") for i in range(2000)))
        finally:
            await mux.aclose()

    assert asyncio.run(run()) == [str(i).encode() for i in range(2000)]


def test_a_script_redis_does_not_know_is_loaded_on_first_use(redis_url: str) -> None:
    redis.Redis.from_url(redis_url).script_flush()
    key = f"mux-script-{uuid.uuid4().hex}"

    async def run() -> tuple[int, int]:
        mux = RedisMux(redis_url)
        script = mux.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
        try:
            return await script(keys=[key], args=[5]), await script(keys=[key], args=[2])
        finally:
            await mux.aclose()

    assert asyncio.run(run()) == (5, 7)


def test_an_error_reply_raises_and_the_connection_keeps_serving(redis_url: str) -> None:
    async def run() -> bool:
        mux = RedisMux(redis_url)
        try:
            with pytest.raises(ResponseError):
                await mux.execute("NO-SUCH-COMMAND")
            return await mux.ping()
        finally:
            await mux.aclose()

    assert asyncio.run(run())


def test_a_dropped_connection_fails_its_calls_and_the_next_call_reconnects(redis_url: str) -> None:
    admin = redis.Redis.from_url(redis_url)

    async def run() -> bool:
        mux = RedisMux(redis_url)
        try:
            await mux.execute("CLIENT", "SETNAME", "mux-under-test")
            for client in admin.client_list():
                if client.get("name") == "mux-under-test":
                    admin.execute_command("CLIENT", "KILL", "ID", client["id"])
            await asyncio.sleep(0.1)  # the close reaches the client
            return await mux.ping()
        finally:
            await mux.aclose()

    assert asyncio.run(run())


def test_a_redis_that_never_answers_times_the_call_out_instead_of_hanging() -> None:
    async def run() -> None:
        async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1 << 16)
            await asyncio.sleep(30)

        server = await asyncio.start_server(swallow, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        mux = RedisMux(f"redis://127.0.0.1:{port}", timeout_s=0.3)
        try:
            with pytest.raises(RedisTimeoutError):
                await asyncio.wait_for(mux.execute("PING"), 5)
        finally:
            await mux.aclose()
            server.close()

    asyncio.run(run())


def test_a_closed_client_refuses_calls() -> None:
    async def run() -> None:
        mux = RedisMux("redis://127.0.0.1:1")
        await mux.aclose()
        with pytest.raises(RedisConnectionError):
            await mux.ping()

    asyncio.run(run())


def test_an_unreachable_redis_is_a_connection_error() -> None:
    async def run() -> None:
        mux = RedisMux("redis://127.0.0.1:1")
        try:
            with pytest.raises(RedisConnectionError):
                await mux.ping()
        finally:
            await mux.aclose()

    asyncio.run(run())


def test_a_command_sent_without_awaiting_reaches_redis_before_later_calls(redis_url: str) -> None:
    key = f"mux-send-{uuid.uuid4().hex}"

    async def run() -> tuple[bytes | None, Any]:
        mux = RedisMux(redis_url)
        try:
            await mux.ping()  # connected: `send` writes at once
            mux.send("SET", key, "sent")  # nobody awaits its reply
            value = await mux.get(key)
            refused = mux.send("NO-SUCH-COMMAND")
            await asyncio.wait([refused])
            return value, refused.exception()
        finally:
            await mux.aclose()

    value, error = asyncio.run(run())
    assert value == b"sent"
    assert isinstance(error, ResponseError)


def test_a_command_sent_before_the_connection_exists_waits_for_it(redis_url: str) -> None:
    async def run() -> Any:
        mux = RedisMux(redis_url)
        try:
            return await mux.send("PING")
        finally:
            await mux.aclose()

    assert asyncio.run(run()) == b"PONG"


def test_a_script_is_sent_whole_once_per_connection_then_by_its_hash(redis_url: str) -> None:
    key = f"mux-script-{uuid.uuid4().hex}"
    admin = redis.Redis.from_url(redis_url)

    async def run() -> tuple[list[Any], list[str]]:
        mux = RedisMux(redis_url)
        script = mux.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
        names: list[str] = []
        send = mux.send

        def named(*args: Any) -> asyncio.Future[Any]:
            names.append(str(args[0]))
            return send(*args)

        mux.send = named  # type: ignore[method-assign]
        try:
            await mux.ping()
            replies = [await script(keys=[key], args=[1]), await script(keys=[key], args=[1])]
            admin.script_flush()  # an operator empties the script cache under a live connection
            replies.append(await script(keys=[key], args=[1]))
            return replies, names
        finally:
            await mux.aclose()

    replies, names = asyncio.run(run())
    assert replies == [1, 2, 3]
    assert names == ["EVAL", "EVALSHA", "EVALSHA", "EVAL"]  # the flush: NOSCRIPT, then whole again
