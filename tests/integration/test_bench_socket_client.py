"""The bench's own WebSocket client against a real uvicorn: handshake, frames both ways of
every length class, pings answered, the closing handshake from either side."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from scripts.bench.socket_client import ProtocolViolation, SocketClosed, connect

HOST = "127.0.0.1"
START_TIMEOUT_S = 10.0
MAX_SIZE = 1024 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def serving(endpoint: Any, **config: Any) -> AsyncIterator[str]:
    port = free_port()
    app = Starlette(routes=[WebSocketRoute("/ws", endpoint)])
    server = uvicorn.Server(
        uvicorn.Config(app, host=HOST, port=port, ws="websockets-sansio", log_level="warning", **config)
    )
    task = asyncio.get_running_loop().create_task(server.serve())
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            while not server.started:
                await asyncio.sleep(0.01)
        yield f"ws://{HOST}:{port}/ws?token=t"
    finally:
        server.should_exit = True
        await task


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    assert websocket.query_params["token"] == "t"
    while True:
        text = await websocket.receive_text()
        if text == "bye":
            await websocket.close(code=4001)
            return
        await websocket.send_text(text)


@pytest.mark.parametrize("size", [0, 125, 126, 65_535, 65_536, 300_000])
def test_text_of_every_length_class_goes_out_and_comes_back_whole(size: int) -> None:
    text = "é" * (size // 2)

    async def run() -> str | bytes:
        async with serving(echo) as url:
            client = await connect(url, open_timeout=5, max_size=MAX_SIZE)
            await client.send(text)
            reply = await client.recv()
            await client.close()
            return reply

    assert asyncio.run(run()) == text


def test_the_server_closing_ends_receiving_with_its_code_and_sends_raise() -> None:
    async def run() -> tuple[list[str | bytes], int | None]:
        async with serving(echo) as url:
            client = await connect(url, open_timeout=5, max_size=MAX_SIZE)
            await client.send("one")
            await client.send("bye")
            received = []
            with pytest.raises(SocketClosed):
                while True:
                    received.append(await client.recv())
            with pytest.raises(SocketClosed):
                await client.send("after")
            return received, client.close_code

    assert asyncio.run(run()) == (["one"], 4001)


def test_server_pings_are_answered_so_an_idle_client_stays_connected() -> None:
    async def run() -> str | bytes:
        # uvicorn drops a client that misses its pong within the timeout.
        async with serving(echo, ws_ping_interval=0.05, ws_ping_timeout=0.2) as url:
            client = await connect(url, open_timeout=5, max_size=MAX_SIZE)
            await asyncio.sleep(1.0)
            await client.send("still here")
            reply = await client.recv()
            await client.close()
            return reply

    assert asyncio.run(run()) == "still here"


def test_a_refused_upgrade_fails_the_connect() -> None:
    async def refuse(websocket: WebSocket) -> None:
        await websocket.close()  # before accept: uvicorn answers 403

    async def run() -> None:
        async with serving(refuse) as url:
            await connect(url, open_timeout=5, max_size=MAX_SIZE)

    with pytest.raises(ProtocolViolation):
        asyncio.run(run())


def test_a_listener_gets_every_message_in_order_then_the_close_once() -> None:
    async def run() -> tuple[list[str | bytes], list[tuple[int, str]]]:
        received: list[str | bytes] = []
        closed: list[tuple[int, str]] = []
        async with serving(echo) as url:
            client = await connect(url, open_timeout=5, max_size=MAX_SIZE)
            await client.send("before listening")
            await asyncio.sleep(0.2)  # the echo is queued until someone listens
            client.listen(received.append, lambda code, reason: closed.append((code, reason)))
            for n in range(100):
                await client.send(str(n))
            await client.send("bye")
            async with asyncio.timeout(5):
                while not closed:
                    await asyncio.sleep(0.01)
        return received, closed

    received, closed = asyncio.run(run())

    assert received == ["before listening", *map(str, range(100))]
    assert closed == [(4001, "")]


def test_a_listener_that_cannot_take_a_message_ends_the_connection_with_its_reason() -> None:
    def refuse(message: str | bytes) -> None:
        raise ValueError(message)

    async def run() -> list[tuple[int, str]]:
        closed: list[tuple[int, str]] = []
        async with serving(echo) as url:
            client = await connect(url, open_timeout=5, max_size=MAX_SIZE)
            client.listen(refuse, lambda code, reason: closed.append((code, reason)))
            await client.send("unreadable")
            async with asyncio.timeout(5):
                while not closed:
                    await asyncio.sleep(0.01)
        return closed

    assert asyncio.run(run()) == [(1006, "client ValueError")]
