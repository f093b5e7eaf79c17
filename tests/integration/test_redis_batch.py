"""The projector's bulk Redis writes on a real Redis: replies in order, errors after the batch."""

from __future__ import annotations

import uuid

import pytest
import redis
from redis.exceptions import ResponseError

from projections import redis_batch


def test_every_command_of_a_batch_runs_in_order_and_returns_its_reply(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    key = f"batch:{uuid.uuid4().hex}"

    replies = redis_batch.execute(
        client, [("SET", key, 1), ("INCRBY", key, 41), ("HSET", f"{key}:h", "a", 1, "b", 2.5), ("GET", key)]
    )

    assert replies == [b"OK", 42, 2, b"42"]  # raw replies: no callbacks
    assert client.hgetall(f"{key}:h") == {b"a": b"1", b"b": b"2.5"}


def test_an_error_reply_raises_after_the_rest_of_the_batch_ran_and_the_client_stays_usable(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    key = f"batch:{uuid.uuid4().hex}"
    client.set(f"{key}:text", "not a number")

    with pytest.raises(ResponseError):
        redis_batch.execute(client, [("INCR", f"{key}:text"), ("SET", f"{key}:after", "ran")])

    assert client.get(f"{key}:after") == b"ran"
    assert redis_batch.execute(client, [("PING",)]) == [b"PONG"]


def test_an_empty_batch_sends_nothing(redis_url: str) -> None:
    assert redis_batch.execute(redis.Redis.from_url(redis_url), []) == []
