"""Frames written straight to uvicorn's transport, on a real uvicorn and a real client: found
under the server `loopify serve` runs, in order with frames sent through ASGI, refused once
the socket is closing."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect

from interfaces.ws.wire import direct_writer, keep_raw_send, wire_frame

HOST = "127.0.0.1"
START_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def serving(endpoint: Any) -> AsyncIterator[int]:
    """uvicorn as `loopify serve` runs it, on a free loopback port, stopped on the way out."""
    port = free_port()
    app = keep_raw_send(Starlette(routes=[WebSocketRoute("/ws", endpoint)]))
    server = uvicorn.Server(uvicorn.Config(app, host=HOST, port=port, ws="websockets-sansio", log_level="warning"))
    task = asyncio.get_running_loop().create_task(server.serve())
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            while not server.started:
                await asyncio.sleep(0.01)
        yield port
    finally:
        server.should_exit = True
        await task


def test_direct_frames_and_asgi_frames_arrive_in_the_order_they_were_written() -> None:
    found: list[bool] = []

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        write = direct_writer(websocket.scope)
        found.append(write is not None)
        assert write is not None
        for n in range(50):
            if n % 2:
                await websocket.send_text(f"asgi {n}")
            else:
                assert write(wire_frame(f"direct {n}"))
        await websocket.receive_text()  # until the client is done

    async def run() -> list[str]:
        async with serving(endpoint) as port, connect(f"ws://{HOST}:{port}/ws") as client:
            received = [await client.recv() for _ in range(50)]
            await client.send("done")
            return [str(text) for text in received]

    received = asyncio.run(run())

    assert found == [True]
    assert received == [f"{'asgi' if n % 2 else 'direct'} {n}" for n in range(50)]


def test_a_closing_socket_refuses_direct_frames() -> None:
    refused: list[bool] = []

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        write = direct_writer(websocket.scope)
        assert write is not None
        await websocket.close(code=4000)
        refused.append(write(wire_frame("too late")) is False)

    async def run() -> None:
        async with serving(endpoint) as port, connect(f"ws://{HOST}:{port}/ws") as client:
            await client.wait_closed()

    asyncio.run(run())

    assert refused == [True]


def test_a_scope_without_the_servers_send_gets_no_direct_writer() -> None:
    assert direct_writer({"type": "websocket"}) is None
