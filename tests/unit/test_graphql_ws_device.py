"""A graphql-ws socket's device and operations without a server: frames from the hub reach the
subscriptions that follow them, typing follows the conversations watched, a subscriber too far
behind is closed, and tartiflette runs each event through the client's selection set."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import orjson

from interfaces.graphql.context import RequestContext
from interfaces.graphql.engine import build_engine
from interfaces.graphql_ws.device import SubscriberDevice
from interfaces.graphql_ws.feeds import FEED_LIMIT, TYPING_EVENT, OperationScope
from interfaces.graphql_ws.operations import run_operation
from interfaces.graphql_ws.protocol import Subscribe
from interfaces.runtime import Runtime
from interfaces.ws.connection import SLOW_CONSUMER_CODE

WAIT_S = 5.0


def frame(event: str, data: dict[str, Any]) -> str:
    return orjson.dumps({"event": event, "data": data}).decode()


def device(overflows: list[int] | None = None) -> SubscriberDevice:
    return SubscriberDevice(None, "bob", lambda code, reason: (overflows if overflows is not None else []).append(code))  # type: ignore[arg-type]


class TestRouting:
    def test_a_frame_reaches_only_the_feeds_of_its_event_that_want_it(self) -> None:
        async def scenario() -> None:
            bob = device()
            scope = OperationScope(bob)
            mine = scope.follow("unread_count", lambda data: True)
            theirs = scope.follow("presence_update", lambda data: data["userId"] == "alice")
            bob.send_text(frame("unread_count", {"count": 3}))
            bob.send_text(frame("presence_update", {"userId": "carol", "isOnline": True}))
            bob.send_text(frame("presence_update", {"userId": "alice", "isOnline": True}))
            assert await asyncio.wait_for(anext(mine), WAIT_S) == {"count": 3}
            assert (await asyncio.wait_for(anext(theirs), WAIT_S))["userId"] == "alice"

        asyncio.run(scenario())

    def test_typing_frames_are_asked_for_only_while_a_typing_feed_watches_the_conversation(self) -> None:
        async def scenario() -> None:
            bob = device()
            first, second = OperationScope(bob), OperationScope(bob)
            first.follow(TYPING_EVENT, lambda data: True, conversation_id="c1")
            second.follow(TYPING_EVENT, lambda data: True, conversation_id="c1")
            assert bob.joined == {"c1"}
            first.close()
            assert bob.joined == {"c1"}  # the other subscription still watches it
            second.close()
            assert bob.joined == set()

        asyncio.run(scenario())

    def test_a_subscriber_too_far_behind_closes_its_socket_as_a_slow_consumer(self) -> None:
        async def scenario() -> None:
            overflows: list[int] = []
            bob = device(overflows)
            OperationScope(bob).follow("unread_count", lambda data: True)
            for count in range(FEED_LIMIT + 1):
                bob.send_text(frame("unread_count", {"count": count}))
            assert overflows == [SLOW_CONSUMER_CODE]

        asyncio.run(scenario())

    def test_a_frame_nobody_follows_is_not_even_read(self) -> None:
        bob = device()
        bob.send_text("this is not JSON, and nobody listens")  # no error: it is dropped unread


class TestOperations:
    def test_each_event_is_executed_through_the_clients_selection_set(self) -> None:
        async def scenario() -> list[dict[str, Any]]:
            engine = await build_engine()
            bob = device()
            scope = OperationScope(bob)
            sent: list[dict[str, Any]] = []
            answered = asyncio.Event()

            async def send(text: str) -> None:
                sent.append(json.loads(text))
                answered.set()

            request = RequestContext(runtime=Runtime(role="api", is_development=False, cors_origin=None), user_id="bob")
            query = "subscription { unreadCountUpdated { total: count } }"
            task = asyncio.create_task(run_operation(engine, request, scope, Subscribe("u", query, None, None), send))
            await asyncio.wait_for(asyncio.shield(scope.live), WAIT_S)
            bob.send_text(frame("unread_count", {"count": 7}))
            await asyncio.wait_for(answered.wait(), WAIT_S)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return sent

        assert asyncio.run(scenario()) == [{"id": "u", "type": "next", "payload": {"data": {"unreadCountUpdated": {"total": 7}}}}]

    def test_a_root_field_without_a_source_stream_is_refused_as_bad_input(self) -> None:
        async def scenario() -> list[dict[str, Any]]:
            engine = await build_engine()
            sent: list[dict[str, Any]] = []

            async def send(text: str) -> None:
                sent.append(json.loads(text))

            request = RequestContext(runtime=Runtime(role="api", is_development=False, cors_origin=None), user_id="bob")
            message = Subscribe("t", "subscription { __typename }", None, None)
            await asyncio.wait_for(run_operation(engine, request, OperationScope(device()), message, send), WAIT_S)
            return sent

        [refused] = asyncio.run(scenario())
        assert refused["type"] == "error"
        assert refused["payload"][0]["extensions"]["code"] == "BAD_USER_INPUT"
