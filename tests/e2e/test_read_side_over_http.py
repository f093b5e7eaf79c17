"""The M2 acceptance story against a real `loopify serve`: queries right after mutations,
search isolation, unread counts, and `loopify replay --verify` while the server keeps answering."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.server_process import ServerProcess, loopify, project_env
from tests.e2e.test_write_side_over_http import START, graphql, token_for

SEND = """mutation($i: SendMessageInput!) { sendMessage(input: $i) { id seq } }"""
MESSAGES = """query($c: ID!, $first: Int!, $after: String) {
  conversationMessages(conversationId: $c, first: $first, after: $after) {
    edges { cursor node { id seq content senderId editedAt deletedAt deliveryStatus } }
    pageInfo { hasNextPage endCursor } } }"""
INBOX = """{ conversations(first: 10) { edges { node { id type unreadCount lastMessage { content } } } } }"""
UNREAD = "{ unreadMessageCount }"
SEARCH = """query($q: String!) { searchMessages(query: $q, first: 10) { edges { node { content senderId } } } }"""


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return project_env(tmp_path / "data")


@pytest.fixture
def server(env: dict[str, str]) -> Iterator[ServerProcess]:
    process = ServerProcess(env).start()
    yield process
    process.stop()


def data(result: dict[str, Any]) -> dict[str, Any]:
    assert "errors" not in result, result
    return result["data"]


class TestReadSideOverHttp:
    def test_every_query_right_after_a_mutation_shows_its_effect(self, env: dict[str, str], server: ServerProcess) -> None:
        alice, bob = token_for(env, "alice"), token_for(env, "bob")
        conversation_id = data(graphql(server, alice, START, {"i": {"type": "ITEM", "participantIds": ["bob"], "itemId": "bike-7"}}))[
            "startConversation"
        ]["id"]

        # Each send is visible to the very next query, with no waiting by the client.
        for n in range(1, 6):
            data(graphql(server, alice, SEND, {"i": {"conversationId": conversation_id, "content": f"offer number {n}"}}))
            page = data(graphql(server, alice, MESSAGES, {"c": conversation_id, "first": 1}))["conversationMessages"]
            assert page["edges"][0]["node"]["content"] == f"offer number {n}"

        # Bob's inbox and unread count, then he reads and both drop to zero at once.
        inbox = data(graphql(server, bob, INBOX))["conversations"]["edges"]
        assert [(e["node"]["type"], e["node"]["unreadCount"], e["node"]["lastMessage"]["content"]) for e in inbox] == [
            ("ITEM", 5, "offer number 5")
        ]
        assert data(graphql(server, bob, UNREAD))["unreadMessageCount"] == 5
        data(graphql(server, bob, "mutation($c: ID!) { markConversationAsRead(conversationId: $c) { success } }", {"c": conversation_id}))
        assert data(graphql(server, bob, UNREAD))["unreadMessageCount"] == 0
        newest = data(graphql(server, alice, MESSAGES, {"c": conversation_id, "first": 1}))["conversationMessages"]
        assert newest["edges"][0]["node"]["deliveryStatus"] == "READ"

        # An edit and a delete show at once; the deleted message keeps its place.
        first_page = data(graphql(server, alice, MESSAGES, {"c": conversation_id, "first": 5}))["conversationMessages"]["edges"]
        oldest_id, second_id = first_page[-1]["node"]["id"], first_page[-2]["node"]["id"]
        data(graphql(server, alice, "mutation($m: ID!) { editMessage(messageId: $m, content: \"offer number 1, final\") { id } }", {"m": oldest_id}))
        data(graphql(server, alice, "mutation($m: ID!) { deleteMessage(messageId: $m) { success } }", {"m": second_id}))
        edges = data(graphql(server, alice, MESSAGES, {"c": conversation_id, "first": 5}))["conversationMessages"]["edges"]
        assert edges[-1]["node"]["content"] == "offer number 1, final" and edges[-1]["node"]["editedAt"]
        assert edges[-2]["node"]["content"] is None and edges[-2]["node"]["deletedAt"]
        assert [e["node"]["seq"] for e in edges] == [5, 4, 3, 2, 1]

    def test_search_finds_a_word_and_never_another_users_message(self, env: dict[str, str], server: ServerProcess) -> None:
        alice, carol = token_for(env, "alice"), token_for(env, "carol")
        with_bob = data(graphql(server, alice, START, {"i": {"type": "DIRECT", "participantIds": ["bob"]}}))["startConversation"]["id"]
        data(graphql(server, alice, SEND, {"i": {"conversationId": with_bob, "content": "the tandem bicycle is red"}}))
        with_dave = data(graphql(server, carol, START, {"i": {"type": "DIRECT", "participantIds": ["dave"]}}))["startConversation"]["id"]
        data(graphql(server, carol, SEND, {"i": {"conversationId": with_dave, "content": "my bicycle is blue"}}))

        alice_hits = data(graphql(server, alice, SEARCH, {"q": "bicycle"}))["searchMessages"]["edges"]
        carol_hits = data(graphql(server, carol, SEARCH, {"q": "bicycle"}))["searchMessages"]["edges"]
        assert [e["node"]["content"] for e in alice_hits] == ["the tandem bicycle is red"]
        assert [e["node"]["content"] for e in carol_hits] == ["my bicycle is blue"]
        forbidden = graphql(server, carol, MESSAGES, {"c": with_bob, "first": 5})
        assert [e["extensions"]["code"] for e in forbidden["errors"]] == ["FORBIDDEN"]

    def test_replay_verify_reports_no_differences_while_queries_keep_answering(
        self, env: dict[str, str], server: ServerProcess
    ) -> None:
        alice = token_for(env, "alice")
        conversation_id = data(graphql(server, alice, START, {"i": {"type": "DIRECT", "participantIds": ["bob"]}}))["startConversation"]["id"]
        for n in range(30):
            data(graphql(server, alice, SEND, {"i": {"conversationId": conversation_id, "content": f"message {n}"}}))
        before = data(graphql(server, alice, MESSAGES, {"c": conversation_id, "first": 100}))

        # Queries run in a loop for the whole replay; every one must succeed.
        failures: list[Any] = []
        answered = 0
        stop = threading.Event()

        def keep_querying() -> None:
            nonlocal answered
            while not stop.is_set() and answered < 10_000:
                result = graphql(server, alice, MESSAGES, {"c": conversation_id, "first": 5})
                if "errors" in result:
                    failures.append(result)
                answered += 1

        querying = threading.Thread(target=keep_querying)
        querying.start()
        try:
            done = loopify(["replay", "--verify"], env)
        finally:
            stop.set()
            querying.join(30)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "verify: no differences" in done.stdout
        assert failures == [] and answered > 0

        # Same answers after the switch, and the live projector carries on in the new generation.
        assert data(graphql(server, alice, MESSAGES, {"c": conversation_id, "first": 100})) == before
        data(graphql(server, alice, SEND, {"i": {"conversationId": conversation_id, "content": "after the replay"}}))
        newest = data(graphql(server, alice, MESSAGES, {"c": conversation_id, "first": 1}))["conversationMessages"]["edges"]
        assert newest[0]["node"]["content"] == "after the replay"
