"""The M1 acceptance story, told against a real `loopify serve` with its embedded Postgres."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from tests.e2e.server_process import ServerProcess, loopify, project_env

SEND = """mutation($i: SendMessageInput!) { sendMessage(input: $i) { id seq content senderId clientMessageId } }"""
START = """mutation($i: StartConversationInput!) { startConversation(input: $i) { id type participants { userId } } }"""


def graphql(server: ServerProcess, token: str | None, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.post(f"{server.url}/graphql", json={"query": query, "variables": variables or {}}, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def error_codes(result: dict[str, Any]) -> list[str]:
    return [error["extensions"]["code"] for error in result.get("errors", [])]


def token_for(env: dict[str, str], user: str, ttl: int = 3600) -> str:
    done = loopify(["token", user, "--ttl", str(ttl)], env)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return project_env(tmp_path / "data")


@pytest.fixture
def server(env: dict[str, str]) -> Iterator[ServerProcess]:
    process = ServerProcess(env).start()
    yield process
    process.stop()


class TestWriteSideOverHttp:
    def test_a_new_user_chats_audits_and_finds_the_data_after_a_restart(self, env: dict[str, str], server: ServerProcess) -> None:
        alice = token_for(env, "alice")

        # Alice starts a DIRECT conversation with Bob; starting it again finds the same one.
        started = graphql(server, alice, START, {"i": {"type": "DIRECT", "participantIds": ["bob"]}})
        conversation = started["data"]["startConversation"]
        assert conversation["type"] == "DIRECT"
        assert sorted(p["userId"] for p in conversation["participants"]) == ["alice", "bob"]
        again = graphql(server, alice, START, {"i": {"type": "DIRECT", "participantIds": ["bob", "alice"]}})
        assert again["data"]["startConversation"]["id"] == conversation["id"]

        # She sends a message; a retry with the same clientMessageId returns the same message.
        message_input = {"conversationId": conversation["id"], "content": "Is the bike still for sale?", "clientMessageId": "m-1"}
        first = graphql(server, alice, SEND, {"i": message_input})["data"]["sendMessage"]
        retry = graphql(server, alice, SEND, {"i": message_input})["data"]["sendMessage"]
        assert retry == first
        assert (first["seq"], first["senderId"]) == (1, "alice")

        # The audit shows the conversation's events with the content.
        entries = self._audit(env, conversation["id"])
        assert [e["type"] for e in entries] == ["ConversationStarted", "MessageSent"]
        assert entries[1]["data"]["content"] == "Is the bike still for sale?"
        assert entries[1]["actor"] == "alice"
        assert set(entries[0]) == {"position", "conversationId", "type", "actor", "at", "data"}

        # After a restart the data is still there, and the retry still finds the message.
        assert server.stop() == 0
        server.start()
        after_restart = graphql(server, alice, SEND, {"i": message_input})["data"]["sendMessage"]
        assert after_restart == first
        assert [e["type"] for e in self._audit(env, conversation["id"])] == ["ConversationStarted", "MessageSent"]

    def test_outsiders_and_bad_tokens_are_refused_with_codes(self, env: dict[str, str], server: ServerProcess) -> None:
        alice, carol = token_for(env, "alice"), token_for(env, "carol")
        conversation_id = graphql(server, alice, START, {"i": {"type": "DIRECT", "participantIds": ["bob"]}})["data"]["startConversation"]["id"]
        message_input = {"conversationId": conversation_id, "content": "hello"}

        assert error_codes(graphql(server, carol, SEND, {"i": message_input})) == ["FORBIDDEN"]
        expired = token_for(env, "alice", ttl=-120)
        assert error_codes(graphql(server, expired, SEND, {"i": message_input})) == ["UNAUTHENTICATED"]
        forged = jwt.encode({"sub": "alice", "exp": 4_000_000_000}, "not-the-server-secret-" * 3, algorithm="HS256")
        assert error_codes(graphql(server, forged, SEND, {"i": message_input})) == ["UNAUTHENTICATED"]
        unsigned = jwt.encode({"sub": "alice", "exp": 4_000_000_000}, None, algorithm="none")
        assert error_codes(graphql(server, unsigned, SEND, {"i": message_input})) == ["UNAUTHENTICATED"]
        assert error_codes(graphql(server, None, SEND, {"i": message_input})) == ["UNAUTHENTICATED"]

        # None of that harmed the conversation: Alice still sends as seq 1.
        sent = graphql(server, alice, SEND, {"i": message_input})["data"]["sendMessage"]
        assert sent["seq"] == 1

    def test_health_reports_the_seed_shape_with_database_and_redis(self, server: ServerProcess) -> None:
        body = httpx.get(f"{server.url}/health", timeout=10).json()
        assert body["status"] == "ok"
        assert body["messaging"]["socketGateway"]["status"] == "healthy"
        assert set(body["messaging"]["messageQueue"]["queueStats"]) == {"normalPriorityCount", "highPriorityCount", "deadLetterCount"}
        assert body["messaging"]["pushNotification"]["status"] == "healthy"
        assert body["database"]["status"] == body["redis"]["status"] == "healthy"

    @staticmethod
    def _audit(env: dict[str, str], conversation_id: str) -> list[dict[str, Any]]:
        done = loopify(["audit", "--json", "--conversation", conversation_id], env)
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
