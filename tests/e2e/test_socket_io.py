"""Socket.IO compatibility at /socket.io/ (design.md §4) with the real npm `socket.io-client`:
the same events as /ws, with Socket.IO acks, beside /ws devices on the same server."""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
from collections.abc import Callable
from typing import Any

from tests.e2e.server_process import ServerProcess
# The graphql-ws module's fixtures: one server for this module too, and users of one test each.
from tests.e2e.test_graphql_ws import env, people, server  # noqa: F401
from tests.e2e.test_graphql_ws import JS_DIR, NODE_TIMEOUT_S, People, install_js_client, start_direct
from tests.e2e.ws_client import WsClient

WAIT_S = 15.0


class SioDevice:
    """A `socket.io-client` in a node process (tests/e2e/js/socket_io_device.mjs)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[dict[str, Any]] = []
        self._changed = asyncio.Event()
        self._tags = itertools.count(1)
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, server: ServerProcess, token: str | None) -> SioDevice:
        node = shutil.which("node")
        assert node is not None, "node is needed for the Socket.IO client test"
        process = await asyncio.create_subprocess_exec(
            node, str(JS_DIR / "socket_io_device.mjs"), server.url, token or "",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        return cls(process)

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            self.lines.append(json.loads(line))
            self._changed.set()

    async def until(self, found: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        async def wait() -> dict[str, Any]:
            while True:
                for line in self.lines:
                    if found(line):
                        return line
                self._changed.clear()
                await self._changed.wait()

        try:
            return await asyncio.wait_for(wait(), WAIT_S)
        except asyncio.TimeoutError:
            raise AssertionError(f"no {what} within {WAIT_S} s; got {self.lines}") from None

    async def event(self, name: str, where: Callable[[Any], bool] = lambda data: True) -> Any:
        line = await self.until(lambda line: line.get("event") == name and where(line.get("data")), f"{name} event")
        return line.get("data")

    def events(self, name: str) -> list[Any]:
        return [line.get("data") for line in self.lines if line.get("event") == name]

    async def emit(self, name: str, data: Any = None, *, ack: bool = True) -> Any:
        command: dict[str, Any] = {"emit": name}
        if data is not None:
            command["data"] = data
        tag = next(self._tags) if ack else None
        if tag is not None:
            command["ack"] = tag
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(command) + "\n").encode())
        await self.process.stdin.drain()
        if tag is None:
            return None
        return (await self.until(lambda line: line.get("ack") == tag, f"ack {tag} of {name}"))["data"]

    async def close(self) -> None:
        if self.process.returncode is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                await asyncio.wait_for(self.process.wait(), NODE_TIMEOUT_S)
            except asyncio.TimeoutError:
                self.process.kill()
                await self.process.wait()
        self._reader.cancel()


def ws_url(server: ServerProcess) -> str:
    return f"ws://127.0.0.1:{server.port}/ws"


class TestSocketIo:
    def test_a_bad_token_is_refused_at_the_handshake_with_its_code(self, server: ServerProcess) -> None:
        install_js_client()

        async def story() -> Any:
            device = await SioDevice.open(server, "not-a-jwt")
            try:
                return await device.event("connect_error")
            finally:
                await device.close()

        assert asyncio.run(story())["code"] == "UNAUTHENTICATED"

    def test_a_socket_io_device_and_a_ws_device_chat_with_acks_typing_and_receipts(
        self, server: ServerProcess, people: People
    ) -> None:
        install_js_client()
        (alice_id, alice), (bob_id, bob) = people["alice"], people["bob"]
        conversation_id = start_direct(server, alice, bob_id)

        async def story() -> None:
            sio = await SioDevice.open(server, alice)
            ws = await WsClient.open(ws_url(server), bob, name="bob")
            try:
                assert (await sio.event("connected"))["userId"] == alice_id
                joined = await sio.emit("join_conversation", {"conversationId": conversation_id})
                assert joined == {"conversationId": conversation_id}

                # Alice sends over Socket.IO: the ack carries the committed message; Bob gets it on /ws.
                ack = await sio.emit("send_message", {"conversationId": conversation_id, "content": "hi from sio"})
                assert (ack["message"]["seq"], ack["message"]["senderId"]) == (1, alice_id)
                await ws.wait_for(
                    lambda f: f["event"] == "message_received" and f["data"]["message"]["content"] == "hi from sio",
                    "Alice's message on /ws",
                )

                # Bob types and answers on /ws: Alice's Socket.IO device sees both.
                await ws.ack("join_conversation", {"conversationId": conversation_id})
                await ws.ack("typing", {"conversationId": conversation_id, "isTyping": True})
                typing = await sio.event("typing_update", lambda d: d["typingUsers"] == [bob_id])
                assert typing["conversationId"] == conversation_id
                await ws.send_message(conversation_id, "hello from ws")
                received = await sio.event("message_received", lambda d: d["message"]["content"] == "hello from ws")
                assert received["message"]["seq"] == 2

                # Alice reads: Bob gets the receipt; Alice's unread count drops to 0.
                await sio.emit("mark_as_read", {"conversationId": conversation_id})
                await ws.wait_for(lambda f: f["event"] == "messages_read" and f["data"]["userId"] == alice_id, "receipt")
                await sio.event("unread_count", lambda d: d["count"] == 0)

                # A device that missed everything catches up with sync, then `synced`.
                replay = await sio.emit("sync", {"conversations": {conversation_id: 0}})
                assert replay == {"conversations": {conversation_id: 2}}
                assert (await sio.event("synced"))["conversations"] == {conversation_id: 2}
            finally:
                await sio.close()
                await ws.close()

        asyncio.run(story())

    def test_bad_events_get_codes_by_ack_or_error_event_and_the_connection_survives(
        self, server: ServerProcess, people: People
    ) -> None:
        install_js_client()
        (_, bob), (_, carol) = people["bob"], people["carol"]
        bobs_conversation = start_direct(server, bob, people.id("dave"))

        async def story() -> None:
            sio = await SioDevice.open(server, carol)
            try:
                await sio.event("connected")
                unknown = await sio.emit("no_such_event", {"x": 1})
                assert unknown["error"]["code"] == "UNKNOWN_EVENT"
                forbidden = await sio.emit("send_message", {"conversationId": bobs_conversation, "content": "hi"})
                assert forbidden["error"]["code"] == "FORBIDDEN"
                not_an_object = await sio.emit("typing", "just a string")
                assert not_an_object["error"]["code"] == "BAD_USER_INPUT"
                huge = await sio.emit("send_message", {"conversationId": bobs_conversation, "content": "x" * 70_000})
                assert huge["error"]["code"] == "PAYLOAD_TOO_LARGE"
                # Without an ack callback a failure arrives as an `error` event, as on /ws.
                await sio.emit("send_message", {"conversationId": "not-a-uuid", "content": "hi"}, ack=False)
                assert (await sio.event("error"))["code"] == "BAD_USER_INPUT"
                # Still connected and served.
                await sio.emit("heartbeat", ack=False)
                await sio.event("heartbeat_ack")
                assert sio.events("disconnect") == []
            finally:
                await sio.close()

        asyncio.run(story())
