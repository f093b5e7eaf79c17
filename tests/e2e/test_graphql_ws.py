"""GraphQL subscriptions over WebSocket (`graphql-transport-ws`) against a real `loopify serve`:
the protocol's handshake, keep-alive and close codes, each subscription field fed by real
traffic (GraphQL mutations and /ws devices), `afterSeq` resume, and the real npm client."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from interfaces.graphql_ws.endpoint import INIT_TIMEOUT_S, KEEPALIVE_PING_S
from tests.e2e.server_process import ServerProcess, project_env
from tests.e2e.test_write_side_over_http import START, graphql, token_for

PROTOCOL = "graphql-transport-ws"
WAIT_S = 20.0  # bound on any one push: projections lag by milliseconds, a busy CI box by seconds
JS_DIR = Path(__file__).with_name("js")
NPM_INSTALL_TIMEOUT_S = 300
NODE_TIMEOUT_S = 60

SEND = """mutation($i: SendMessageInput!) { sendMessage(input: $i) { id seq } }"""
READ = """mutation($c: ID!) { markConversationAsRead(conversationId: $c) { success } }"""
MESSAGE_ADDED = """subscription($c: ID!, $after: Int) {
  messageAdded(conversationId: $c, afterSeq: $after) { id seq content senderId conversationId } }"""
TYPING = """subscription($c: ID!) { typingIndicators(conversationId: $c) { conversationId typingUsers } }"""
ONLINE = """subscription($u: [ID!]!) { userOnlineStatusChanged(userIds: $u) { userId isOnline lastSeen } }"""
UNREAD = """subscription { unreadCountUpdated { count } }"""


# ---- fixtures: one server for the module; every test has its own users -----------------------


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return project_env(tmp_path_factory.mktemp("graphql-ws") / "data")


@pytest.fixture(scope="module")
def server(env: dict[str, str]) -> Iterator[ServerProcess]:
    process = ServerProcess(env).start()
    yield process
    process.stop()


class People:
    """Users of one test only (`people["alice"]` is `(user id, token)`); each token is minted
    by `loopify token` the first time it is asked for."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.suffix = uuid.uuid4().hex[:8]
        self.tokens: dict[str, str] = {}

    def id(self, name: str) -> str:
        return f"{name}-{self.suffix}"

    def __getitem__(self, name: str) -> tuple[str, str]:
        user = self.id(name)
        if user not in self.tokens:
            self.tokens[user] = token_for(self.env, user)
        return user, self.tokens[user]


@pytest.fixture
def people(env: dict[str, str]) -> People:
    return People(env)


@pytest.fixture(scope="module")
def tester(env: dict[str, str]) -> tuple[str, str]:
    """One user for the protocol tests, where no conversation is involved: (user id, token)."""
    return "protocol-tester", token_for(env, "protocol-tester")


def start_direct(server: ServerProcess, token: str, other: str) -> str:
    """A new DIRECT conversation, already in the read model (so `other` can subscribe to it)."""
    started = graphql(server, token, START, {"i": {"type": "DIRECT", "participantIds": [other]}})
    assert "errors" not in started, started
    conversation_id = started["data"]["startConversation"]["id"]
    # The starter's own read waits until the projections show the start (read-your-writes).
    shown = graphql(server, token, "query($c: ID!) { conversation(id: $c) { id } }", {"c": conversation_id})
    assert shown.get("data", {}).get("conversation") == {"id": conversation_id}, shown
    return conversation_id


def send_message(server: ServerProcess, token: str, conversation_id: str, content: str) -> int:
    sent = graphql(server, token, SEND, {"i": {"conversationId": conversation_id, "content": content}})
    assert "errors" not in sent, sent
    return sent["data"]["sendMessage"]["seq"]


# ---- a graphql-transport-ws client, small enough to see the protocol in the tests -------------


class Socket:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.pending: deque[dict[str, Any]] = deque()  # operation messages read while waiting for control ones
        self.server_pings = 0

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def _read(self) -> dict[str, Any]:
        message = json.loads(await asyncio.wait_for(self.ws.recv(), WAIT_S))
        if message["type"] == "ping":  # the spec: answer as soon as possible
            self.server_pings += 1
            await self.send({"type": "pong"})
        return message

    async def control(self, kind: str) -> dict[str, Any]:
        """The next `kind` message (ack, pong, ping); operation messages are kept for later."""
        while True:
            message = await self._read()
            if message["type"] == kind:
                return message
            if "id" in message:
                self.pending.append(message)

    async def init(self, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        await self.send({"type": "connection_init", "payload": payload} if payload is not None else {"type": "connection_init"})
        return await self.control("connection_ack")

    async def subscribe(self, operation_id: str, query: str, variables: dict[str, Any] | None = None) -> None:
        """Subscribe, then wait until the server says it is live (it reads the ping only then)."""
        await self.send({"id": operation_id, "type": "subscribe", "payload": {"query": query, "variables": variables or {}}})
        await self.send({"type": "ping"})
        await self.control("pong")

    async def message(self, operation_id: str) -> dict[str, Any]:
        """The next next/error/complete message of one operation."""
        for kept in list(self.pending):
            if kept["id"] == operation_id:
                self.pending.remove(kept)
                return kept
        while True:
            message = await self._read()
            if message.get("id") == operation_id:
                return message
            if "id" in message:
                self.pending.append(message)

    async def data(self, operation_id: str) -> dict[str, Any]:
        message = await self.message(operation_id)
        assert message["type"] == "next" and "errors" not in message["payload"], message
        return message["payload"]["data"]

    async def closed(self) -> tuple[int, str]:
        """Read until the server closes the socket; its close code and reason."""
        try:
            while True:
                await asyncio.wait_for(self.ws.recv(), INIT_TIMEOUT_S + WAIT_S)
        except ConnectionClosed as closed:
            assert closed.rcvd is not None, "the socket ended without a close frame"
            return closed.rcvd.code, closed.rcvd.reason


@asynccontextmanager
async def graphql_socket(
    server: ServerProcess, subprotocols: list[str] | None = None, token: str | None = None
) -> AsyncIterator[Socket]:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with connect(
        f"ws://127.0.0.1:{server.port}/graphql",
        subprotocols=[PROTOCOL] if subprotocols is None else subprotocols,  # type: ignore[misc]
        additional_headers=headers,
        proxy=None,
    ) as ws:
        yield Socket(ws)


@asynccontextmanager
async def subscriber(server: ServerProcess, token: str) -> AsyncIterator[Socket]:
    async with graphql_socket(server) as socket:
        await socket.init({"token": token})
        yield socket


@asynccontextmanager
async def ws_device(server: ServerProcess, token: str) -> AsyncIterator[ClientConnection]:
    """A /ws client (design.md §4), as a phone would connect."""
    async with connect(f"ws://127.0.0.1:{server.port}/ws?token={token}", proxy=None) as ws:
        hello = json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
        assert hello["event"] == "connected", hello
        yield ws


async def ws_request(ws: ClientConnection, event: str, data: dict[str, Any]) -> dict[str, Any]:
    request_id = uuid.uuid4().hex
    await ws.send(json.dumps({"event": event, "data": data, "id": request_id}))
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
        if frame.get("id") == request_id:
            assert frame["event"] == "ack", frame
            return frame["data"]


# ---- the protocol ------------------------------------------------------------------------------


class TestHandshake:
    def test_a_token_in_the_init_payload_is_acknowledged_with_the_user(
        self, server: ServerProcess, tester: tuple[str, str]
    ) -> None:
        user, token = tester

        async def scenario() -> None:
            async with graphql_socket(server) as socket:
                assert socket.ws.subprotocol == PROTOCOL
                ack = await socket.init({"token": token})
                assert ack == {"type": "connection_ack", "payload": {"userId": user}}

        asyncio.run(scenario())

    def test_the_bearer_header_of_the_upgrade_authenticates_an_init_without_payload(
        self, server: ServerProcess, tester: tuple[str, str]
    ) -> None:
        user, token = tester

        async def scenario() -> None:
            async with graphql_socket(server, token=token) as socket:
                assert (await socket.init())["payload"]["userId"] == user

        asyncio.run(scenario())

    @pytest.mark.parametrize("credentials", ["none", "garbage", "expired"])
    def test_an_init_without_a_valid_token_is_closed_with_4403_forbidden(
        self, env: dict[str, str], server: ServerProcess, credentials: str
    ) -> None:
        payload = {
            "none": {},
            "garbage": {"token": "not-a-jwt"},
            "expired": {"token": token_for(env, "alice-expired", ttl=-3600)},
        }[credentials]

        async def scenario() -> None:
            async with graphql_socket(server) as socket:
                await socket.send({"type": "connection_init", "payload": payload})
                assert (await socket.closed())[0] == 4403

        asyncio.run(scenario())

    def test_a_client_that_does_not_offer_the_subprotocol_is_closed_with_4406(self, server: ServerProcess) -> None:
        async def scenario() -> None:
            async with graphql_socket(server, subprotocols=["graphql-ws"]) as socket:  # the legacy protocol
                assert await socket.closed() == (4406, "Subprotocol not acceptable")

        asyncio.run(scenario())

    def test_a_socket_that_never_sends_connection_init_is_closed_with_4408(self, server: ServerProcess) -> None:
        async def scenario() -> None:
            async with graphql_socket(server) as socket:
                await socket.send({"type": "ping"})  # pings are allowed before init, and do not count as one
                await socket.control("pong")
                assert await socket.closed() == (4408, "Connection initialisation timeout")

        asyncio.run(scenario())

    def test_a_second_connection_init_is_closed_with_4429(self, server: ServerProcess, tester: tuple[str, str]) -> None:
        _, token = tester

        async def scenario() -> None:
            async with graphql_socket(server) as socket:
                await socket.init({"token": token})
                await socket.send({"type": "connection_init", "payload": {"token": token}})
                assert await socket.closed() == (4429, "Too many initialisation requests")

        asyncio.run(scenario())

    def test_subscribe_before_the_ack_is_closed_with_4401(self, server: ServerProcess) -> None:
        async def scenario() -> None:
            async with graphql_socket(server) as socket:
                await socket.send({"id": "1", "type": "subscribe", "payload": {"query": UNREAD}})
                assert await socket.closed() == (4401, "Unauthorized")

        asyncio.run(scenario())


class TestProtocolMessages:
    @pytest.mark.parametrize(
        "raw",
        [
            "not json",
            "[1, 2]",
            json.dumps({"type": "hello"}),
            json.dumps({"type": "next", "id": "1", "payload": {}}),  # a server message from the client
            json.dumps({"type": "subscribe", "payload": {"query": "{ viewer { id } }"}}),  # no id
            json.dumps({"type": "subscribe", "id": "1", "payload": {"variables": {}}}),  # no query
            json.dumps({"type": "subscribe", "id": "1", "payload": {"query": "{ viewer { id } }", "variables": [1]}}),
            json.dumps({"type": "complete"}),
            json.dumps({"type": "ping", "payload": "not an object"}),
            b"\x00binary",
        ],
    )
    def test_an_invalid_message_closes_the_socket_with_4400(
        self, server: ServerProcess, tester: tuple[str, str], raw: str | bytes
    ) -> None:
        _, token = tester

        async def scenario() -> None:
            async with subscriber(server, token) as socket:
                await socket.ws.send(raw)
                code, reason = await socket.closed()
                assert code == 4400 and reason.startswith("Invalid message")

        asyncio.run(scenario())

    def test_a_subscribe_with_the_id_of_an_active_operation_is_closed_with_4409(
        self, server: ServerProcess, tester: tuple[str, str]
    ) -> None:
        _, token = tester

        async def scenario() -> None:
            async with subscriber(server, token) as socket:
                await socket.subscribe("unread", UNREAD)
                await socket.send({"id": "unread", "type": "subscribe", "payload": {"query": UNREAD}})
                assert await socket.closed() == (4409, "Subscriber for unread already exists")

        asyncio.run(scenario())

    def test_a_ping_gets_a_pong_with_its_payload_and_the_server_pings_on_its_own(
        self, server: ServerProcess, tester: tuple[str, str]
    ) -> None:
        _, token = tester

        async def scenario() -> None:
            async with subscriber(server, token) as socket:
                await socket.send({"type": "ping", "payload": {"sent": "now"}})
                assert await socket.control("pong") == {"type": "pong", "payload": {"sent": "now"}}
                # The server's keep-alive ping comes within its interval; the client answers it.
                ping = await asyncio.wait_for(socket.control("ping"), KEEPALIVE_PING_S + WAIT_S)
                assert ping == {"type": "ping"}
                # An unsolicited pong (a one-way heartbeat) is allowed and changes nothing.
                await socket.send({"type": "pong"})
                await socket.send({"type": "ping"})
                await socket.control("pong")

        asyncio.run(scenario())


class TestOperations:
    def test_a_query_gets_one_next_then_complete(self, server: ServerProcess, tester: tuple[str, str]) -> None:
        user, token = tester

        async def scenario() -> None:
            async with subscriber(server, token) as socket:
                await socket.send({"id": "q", "type": "subscribe", "payload": {"query": "{ viewer { id } }"}})
                assert await socket.data("q") == {"viewer": {"id": user}}
                assert await socket.message("q") == {"id": "q", "type": "complete"}

        asyncio.run(scenario())

    def test_a_subscription_streams_until_the_client_completes_it_and_then_its_id_is_free(
        self, server: ServerProcess, people: People
    ) -> None:
        (_, alice), (bob_id, bob) = people["alice"], people["bob"]
        conversation_id = start_direct(server, alice, bob_id)

        async def scenario() -> None:
            async with subscriber(server, bob) as socket:
                await socket.subscribe("m", MESSAGE_ADDED, {"c": conversation_id})
                send_message(server, alice, conversation_id, "first")
                assert (await socket.data("m"))["messageAdded"]["content"] == "first"

                # Bob stops listening; a second subscription shows the next message arrives,
                # and nothing more comes for the completed one.
                await socket.send({"id": "m", "type": "complete"})
                await socket.subscribe("watch", MESSAGE_ADDED, {"c": conversation_id})
                send_message(server, alice, conversation_id, "second")
                assert (await socket.data("watch"))["messageAdded"]["content"] == "second"
                await socket.send({"id": "q", "type": "subscribe", "payload": {"query": "{ viewer { id } }"}})
                assert (await socket.message("q"))["type"] == "next"
                assert (await socket.message("q"))["type"] == "complete"
                assert [kept for kept in socket.pending if kept["id"] == "m"] == []

                # The id is free again: subscribing with it is no 4409. (The alias tells this
                # subscription's results from any late one of the completed subscription.)
                again = "subscription($c: ID!) { again: messageAdded(conversationId: $c, afterSeq: 1) { content } }"
                await socket.subscribe("m", again, {"c": conversation_id})
                assert await socket.data("m") == {"again": {"content": "second"}}

        asyncio.run(scenario())

    def test_an_invalid_document_gets_an_error_message_and_the_socket_stays_open(
        self, server: ServerProcess, tester: tuple[str, str]
    ) -> None:
        _, token = tester

        async def scenario() -> None:
            async with subscriber(server, token) as socket:
                await socket.send({"id": "bad", "type": "subscribe", "payload": {"query": "subscription { noSuchField }"}})
                refused = await socket.message("bad")
                assert refused["type"] == "error"
                assert [error["extensions"]["code"] for error in refused["payload"]] == ["BAD_USER_INPUT"]
                await socket.send({"id": "syntax", "type": "subscribe", "payload": {"query": "subscription {"}})
                assert (await socket.message("syntax"))["type"] == "error"
                await socket.subscribe("ok", UNREAD)  # still open and serving

        asyncio.run(scenario())

    def test_subscribing_to_someone_elses_or_an_unknown_conversation_is_refused_with_its_code(
        self, server: ServerProcess, people: People
    ) -> None:
        (_, alice), (_, carol) = people["alice"], people["carol"]
        conversation_id = start_direct(server, alice, people.id("bob"))

        async def scenario() -> None:
            async with subscriber(server, carol) as socket:
                for operation_id, target in (("theirs", conversation_id), ("unknown", str(uuid.uuid4()))):
                    await socket.send(
                        {"id": operation_id, "type": "subscribe", "payload": {"query": MESSAGE_ADDED, "variables": {"c": target}}}
                    )
                forbidden, unknown = await socket.message("theirs"), await socket.message("unknown")
                assert forbidden["type"] == unknown["type"] == "error"
                assert forbidden["payload"][0]["extensions"]["code"] == "FORBIDDEN"
                assert unknown["payload"][0]["extensions"]["code"] == "NOT_FOUND"

        asyncio.run(scenario())


# ---- the subscription fields -------------------------------------------------------------------


class TestMessageAdded:
    def test_messages_sent_over_graphql_and_over_ws_reach_the_subscriber_in_order(
        self, server: ServerProcess, people: People
    ) -> None:
        (alice_id, alice), (bob_id, bob) = people["alice"], people["bob"]
        conversation_id = start_direct(server, alice, bob_id)

        async def scenario() -> None:
            async with subscriber(server, bob) as socket, ws_device(server, alice) as phone:
                await socket.subscribe("m", MESSAGE_ADDED, {"c": conversation_id})
                send_message(server, alice, conversation_id, "over graphql")
                await ws_request(phone, "send_message", {"conversationId": conversation_id, "content": "over ws"})
                received = [(await socket.data("m"))["messageAdded"] for _ in range(2)]
                assert [(m["seq"], m["content"], m["senderId"]) for m in received] == [
                    (1, "over graphql", alice_id),
                    (2, "over ws", alice_id),
                ]
                assert {m["conversationId"] for m in received} == {conversation_id}

        asyncio.run(scenario())

    def test_after_seq_replays_what_was_missed_then_goes_live_without_loss_or_duplicates(
        self, server: ServerProcess, people: People
    ) -> None:
        (_, alice), (bob_id, bob) = people["alice"], people["bob"]
        conversation_id = start_direct(server, alice, bob_id)
        for n in range(1, 6):
            send_message(server, alice, conversation_id, f"before {n}")
        last = 20

        # Alice keeps sending while Bob resumes from seq 2, so replay and live traffic overlap.
        def keep_sending() -> None:
            for n in range(6, last + 1):
                send_message(server, alice, conversation_id, f"during {n}")

        async def scenario() -> list[int]:
            async with subscriber(server, bob) as socket:
                sender = threading.Thread(target=keep_sending)
                await socket.send(
                    {"id": "resume", "type": "subscribe",
                     "payload": {"query": MESSAGE_ADDED, "variables": {"c": conversation_id, "after": 2}}}
                )
                sender.start()
                seqs: list[int] = []
                try:
                    while not seqs or seqs[-1] < last:
                        seqs.append((await socket.data("resume"))["messageAdded"]["seq"])
                finally:
                    await asyncio.to_thread(sender.join, WAIT_S)
                # One more message marks the end: a duplicate of anything would come before it.
                marker = await asyncio.to_thread(send_message, server, alice, conversation_id, "marker")
                seqs.append((await socket.data("resume"))["messageAdded"]["seq"])
                assert seqs[-1] == marker
                return seqs

        assert asyncio.run(scenario()) == list(range(3, last + 2))


class TestTypingIndicators:
    def test_typing_on_a_ws_device_reaches_the_subscriber_with_the_full_list(
        self, server: ServerProcess, people: People
    ) -> None:
        (alice_id, alice), (bob_id, bob) = people["alice"], people["bob"]
        conversation_id = start_direct(server, alice, bob_id)

        async def scenario() -> None:
            async with subscriber(server, bob) as socket, ws_device(server, alice) as phone:
                await socket.subscribe("t", TYPING, {"c": conversation_id})
                await ws_request(phone, "typing", {"conversationId": conversation_id, "isTyping": True})
                assert (await socket.data("t"))["typingIndicators"] == {
                    "conversationId": conversation_id, "typingUsers": [alice_id]
                }
                await ws_request(phone, "typing", {"conversationId": conversation_id, "isTyping": False})
                assert (await socket.data("t"))["typingIndicators"]["typingUsers"] == []

        asyncio.run(scenario())


class TestUnreadCountUpdated:
    def test_the_total_rises_with_each_message_and_drops_to_zero_on_read(
        self, server: ServerProcess, people: People
    ) -> None:
        (_, alice), (bob_id, bob) = people["alice"], people["bob"]
        conversation_id = start_direct(server, alice, bob_id)

        async def counts_until(socket: Socket, target: int) -> list[int]:
            seen = [(await socket.data("u"))["unreadCountUpdated"]["count"]]
            while seen[-1] != target:
                seen.append((await socket.data("u"))["unreadCountUpdated"]["count"])
            return seen

        async def scenario() -> None:
            async with subscriber(server, bob) as socket:
                await socket.subscribe("u", UNREAD)
                send_message(server, alice, conversation_id, "one")
                send_message(server, alice, conversation_id, "two")
                # (A 0 may come first: the count published when the conversation started.)
                rising = await counts_until(socket, 2)
                assert rising == sorted(rising), rising
                assert "errors" not in graphql(server, bob, READ, {"c": conversation_id})
                after_read = await counts_until(socket, 0)
                assert set(after_read[:-1]) <= {2}, after_read

        asyncio.run(scenario())


class TestUserOnlineStatusChanged:
    def test_a_watched_user_goes_online_with_a_ws_device_and_offline_when_it_leaves(
        self, server: ServerProcess, people: People
    ) -> None:
        (alice_id, alice), (bob_id, bob) = people["alice"], people["bob"]
        start_direct(server, alice, bob_id)  # presence goes to people who share a conversation

        async def scenario() -> None:
            async with subscriber(server, bob) as socket:
                await socket.subscribe("o", ONLINE, {"u": [alice_id]})
                async with ws_device(server, alice):
                    online = (await socket.data("o"))["userOnlineStatusChanged"]
                    assert (online["userId"], online["isOnline"]) == (alice_id, True)
                offline = (await socket.data("o"))["userOnlineStatusChanged"]
                assert (offline["userId"], offline["isOnline"]) == (alice_id, False)
                assert offline["lastSeen"]

        asyncio.run(scenario())


# ---- the real npm client ------------------------------------------------------------------------


def install_js_client() -> None:
    if all((JS_DIR / "node_modules" / package).is_dir() for package in ("graphql-ws", "socket.io-client")):
        return
    npm = shutil.which("npm")
    assert npm is not None, "npm is needed for the graphql-ws client test"
    done = subprocess.run(
        [npm, "install", "--prefix", str(JS_DIR), "--no-audit", "--no-fund"],
        capture_output=True, text=True, timeout=NPM_INSTALL_TIMEOUT_S, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


class TestGraphqlWsNpmClient:
    def test_the_npm_client_resumes_after_seq_and_then_receives_live_messages(
        self, server: ServerProcess, people: People
    ) -> None:
        install_js_client()
        node = shutil.which("node")
        assert node is not None, "node is needed for the graphql-ws client test"
        (alice_id, alice), (bob_id, bob) = people["alice"], people["bob"]
        conversation_id = start_direct(server, alice, bob_id)
        for n in range(1, 4):
            send_message(server, alice, conversation_id, f"missed {n}")

        async def scenario() -> list[dict[str, Any]]:
            client = await asyncio.create_subprocess_exec(
                node, str(JS_DIR / "subscribe_messages.mjs"), f"ws://127.0.0.1:{server.port}/graphql",
                bob, conversation_id, "0", "6",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )
            assert client.stdout is not None and client.stderr is not None
            async def payload() -> dict[str, Any]:
                line = await asyncio.wait_for(client.stdout.readline(), NODE_TIMEOUT_S)  # type: ignore[union-attr]
                assert line, (await client.stderr.read()).decode()  # type: ignore[union-attr]
                return json.loads(line)

            try:
                lines = [await payload() for _ in range(3)]  # the replayed ones: it is live from here on
                for n in range(4, 7):
                    await asyncio.to_thread(send_message, server, alice, conversation_id, f"live {n}")
                lines += [await payload() for _ in range(3)]
                assert await asyncio.wait_for(client.wait(), NODE_TIMEOUT_S) == 0, await client.stderr.read()
                return lines
            finally:
                if client.returncode is None:
                    client.kill()
                    await client.wait()

        payloads = asyncio.run(scenario())
        messages = [payload["data"]["messageAdded"] for payload in payloads]
        assert [(m["seq"], m["content"], m["senderId"]) for m in messages] == [
            (1, "missed 1", alice_id), (2, "missed 2", alice_id), (3, "missed 3", alice_id),
            (4, "live 4", alice_id), (5, "live 5", alice_id), (6, "live 6", alice_id),
        ]
