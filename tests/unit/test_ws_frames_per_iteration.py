"""A device's frames leave in one write per event-loop iteration, in the order they were sent;
a socket that refuses the direct write gets them through the ASGI path, still in order."""

from __future__ import annotations

import asyncio
from interfaces.ws.connection import Connection
from interfaces.ws.wire import at_end_of_iteration, wire_frame


class RecordingSocket:
    """Stands in for Starlette's WebSocket: what went through the ASGI path."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send_text(self, text: str) -> None:
        self.sent.append(text)


class Transport:
    """A direct writer: records each write, or refuses them all (a paused or closing socket)."""

    def __init__(self, *, accepts: bool = True) -> None:
        self.accepts = accepts
        self.writes: list[bytes] = []

    def __call__(self, frames: bytes) -> bool:
        if self.accepts:
            self.writes.append(frames)
        return self.accepts


def device(transport: Transport) -> tuple[Connection, RecordingSocket]:
    socket = RecordingSocket()
    return Connection(socket, "alice", direct=transport), socket  # type: ignore[arg-type]


async def next_iterations(count: int = 3) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


def test_frames_sent_in_one_iteration_leave_in_one_write_in_order() -> None:
    transport = Transport()

    async def run() -> None:
        connection, _ = device(transport)
        for n in range(3):
            connection.send_text(f"frame {n}")
        assert transport.writes == []  # nothing yet: the iteration is still running
        await next_iterations()
        connection.send_text("frame 3")
        await next_iterations()

    asyncio.run(run())

    assert transport.writes == [
        wire_frame("frame 0") + wire_frame("frame 1") + wire_frame("frame 2"),
        wire_frame("frame 3"),
    ]


def test_a_refused_write_sends_the_frames_through_asgi_in_order() -> None:
    transport = Transport(accepts=False)

    async def run() -> list[str]:
        connection, socket = device(transport)
        for n in range(3):
            connection.send_text(f"frame {n}")
        await next_iterations()
        connection.send_text("frame 3")  # the writer task is still the way out: behind the others
        await next_iterations(10)
        return socket.sent

    assert asyncio.run(run()) == ["frame 0", "frame 1", "frame 2", "frame 3"]
    assert transport.writes == []


def test_a_device_closed_before_the_iteration_ends_writes_nothing() -> None:
    transport = Transport()

    async def run() -> None:
        connection, _ = device(transport)
        connection.send_text("frame 0")
        await connection.stop()
        await next_iterations()

    asyncio.run(run())

    assert transport.writes == []


def test_callbacks_run_once_each_after_the_callbacks_already_due_on_every_new_loop() -> None:
    def story() -> list[str]:
        seen: list[str] = []

        async def run() -> None:
            loop = asyncio.get_running_loop()
            loop.call_soon(seen.append, "due before")
            at_end_of_iteration(lambda: seen.append("end 1"))
            at_end_of_iteration(lambda: seen.append("end 2"))
            loop.call_soon(seen.append, "due after")  # scheduled later: runs after the end
            await next_iterations()

        asyncio.run(run())
        return seen

    expected = ["due before", "end 1", "end 2", "due after"]
    assert story() == expected
    assert story() == expected  # a second loop in the same thread gets its own schedule
