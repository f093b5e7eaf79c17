"""The live relay on a real Redis: a batch becomes client frames on the right channels."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import redis

from domain.conversation import Conversation
from domain.values import ConversationType
from projections.relay import TYPING_KEY, Relay, conversation_channel, unread_frame, user_channel

RECEIVE_TIMEOUT_S = 2.0
END = b"end of the test's frames"


def published_frames(redis_url: str, channel: str, events: list[tuple[int, Any]]) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(redis_url)
    subscriber = client.pubsub(ignore_subscribe_messages=True)
    subscriber.subscribe(channel)
    subscriber.get_message(timeout=RECEIVE_TIMEOUT_S)  # the subscribe confirmation
    try:
        Relay(client).publish(events)
        client.publish(channel, END)  # a channel delivers in order: everything published is before it
        frames = []
        while (message := subscriber.get_message(timeout=RECEIVE_TIMEOUT_S)) is not None and message["data"] != END:
            frames.append(orjson.loads(orjson.loads(message["data"])["frame"]))
        assert message is not None, "the end marker never came"
        return frames
    finally:
        subscriber.close()


def test_a_batch_of_typing_changes_and_a_message_gives_each_typing_list_in_event_order(redis_url: str) -> None:
    conversation = Conversation.start(uuid.uuid4(), "alice", ConversationType.GROUP, frozenset({"bob", "carol"}))
    conversation.set_typing("alice", True)
    conversation.set_typing("bob", True)
    conversation.send_message("alice", uuid.uuid4(), "hello")  # sending ends alice's typing
    conversation.send_message("carol", uuid.uuid4(), "hi")  # carol was not typing: no update
    conversation.set_typing("bob", False)
    events = list(enumerate(conversation.collect_events(), start=1))

    frames = published_frames(redis_url, conversation_channel(conversation.id), events)

    typing = [f["data"]["typingUsers"] for f in frames if f["event"] == "typing_update"]
    assert typing == [["alice"], ["alice", "bob"], ["bob"], []]
    assert [f["event"] for f in frames] == [
        "typing_update", "typing_update", "message_received", "typing_update", "message_received", "typing_update",
    ]  # fmt: skip
    assert redis.Redis.from_url(redis_url).smembers(TYPING_KEY.format(conversation.id)) == set()


def test_a_batch_of_messages_runs_its_typing_script_and_later_commands_in_one_round_trip(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    conversation = Conversation.start(uuid.uuid4(), "alice", ConversationType.GROUP, frozenset({"bob"}))
    client.sadd(TYPING_KEY.format(conversation.id), "alice")  # typing since an earlier batch
    conversation.send_message("bob", uuid.uuid4(), "hi")  # bob was not typing: no update
    conversation.send_message("alice", uuid.uuid4(), "hello")  # ends alice's typing
    events = list(enumerate(conversation.collect_events(), start=1))
    subscriber = client.pubsub(ignore_subscribe_messages=True)
    subscriber.subscribe(conversation_channel(conversation.id))
    subscriber.get_message(timeout=RECEIVE_TIMEOUT_S)
    try:
        later = [("SET", "after-the-frames", "1"), ("GET", "after-the-frames")]
        replies = Relay(client).publish(events, then=lambda: later)
        client.publish(conversation_channel(conversation.id), END)
        frames = []
        while (message := subscriber.get_message(timeout=RECEIVE_TIMEOUT_S)) is not None and message["data"] != END:
            frames.append(orjson.loads(orjson.loads(message["data"])["frame"]))
    finally:
        subscriber.close()

    assert replies == [b"OK", b"1"]  # the replies of `then`, in order
    # The typing frame a message calls for comes after the batch's messages.
    assert [f["event"] for f in frames] == ["message_received", "message_received", "typing_update"]
    assert frames[-1]["data"]["typingUsers"] == []
    assert client.smembers(TYPING_KEY.format(conversation.id)) == set()


def test_the_frames_are_on_their_way_while_the_later_commands_are_being_built(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    conversation = Conversation.start(uuid.uuid4(), "alice", ConversationType.GROUP, frozenset({"bob"}))
    conversation.send_message("alice", uuid.uuid4(), "hello")
    events = list(enumerate(conversation.collect_events(), start=1))
    subscriber = client.pubsub(ignore_subscribe_messages=True)
    subscriber.subscribe(conversation_channel(conversation.id))
    subscriber.get_message(timeout=RECEIVE_TIMEOUT_S)
    received_while_building: list[str] = []

    def later_commands() -> list[Any]:
        # A message to a large group: the runner derives an unread count per member here.
        message = subscriber.get_message(timeout=RECEIVE_TIMEOUT_S)
        if message is not None:
            received_while_building.append(orjson.loads(orjson.loads(message["data"])["frame"])["event"])
        return [("SET", "built-after-the-frames", "1")]

    try:
        replies = Relay(client).publish(events, then=later_commands)
    finally:
        subscriber.close()

    assert received_while_building == ["message_received"]
    assert replies == [b"OK"]


def test_unread_totals_with_a_route_share_one_envelope_per_conversation_and_the_rest_go_direct(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    subscriber = client.pubsub(ignore_subscribe_messages=True)
    channels = [conversation_channel("group"), user_channel("dave")]
    subscriber.subscribe(*channels)
    for _ in channels:
        subscriber.get_message(timeout=RECEIVE_TIMEOUT_S)  # the subscribe confirmations
    try:
        Relay(client).publish_unread({"alice": 2, "bob": 2, "dave": 7}, {"alice": "group", "bob": "group"})
        envelopes = []
        while (message := subscriber.get_message(timeout=RECEIVE_TIMEOUT_S)) is not None:
            envelopes.append((message["channel"].decode(), orjson.loads(message["data"])))
    finally:
        subscriber.close()

    assert sorted(envelopes, key=lambda pair: pair[0]) == [
        ("conv:group", {"kind": "unread", "conversationId": "group", "counts": {"alice": 2, "bob": 2}}),
        ("user:dave", {"kind": "user", "conversationId": None, "frame": unread_frame(7)}),
    ]
