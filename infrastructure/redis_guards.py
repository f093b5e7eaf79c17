"""Cheap Redis checks in front of the write side: rate limit, short-term dedup, typing gate."""

from __future__ import annotations

import hashlib
import time

import redis.asyncio as aioredis

from projections.relay import TYPING_KEY  # the set the relay keeps of who is typing

RATE_WINDOW_S = 60  # RATE_LIMIT_PER_MINUTE is per minute; a fixed window is simple and fair enough
DEDUP_TTL_S = 300  # the seed's 5 minutes: a client's retries happen within seconds
TYPING_START_THROTTLE_S = 3  # at most one "started typing" per user and conversation every 3 s
TYPING_EXPIRY_S = 6  # clients refresh every 3 s; two missed refreshes mean they stopped
TYPING_EXPIRIES_KEY = "typing:expiries"

_POP_EXPIRED = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
return due
"""


# INCR, and start the window on the first hit (EXPIRE NX needs Redis 7; this works on 6.2).
_COUNT_IN_WINDOW = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return count
"""


class RateLimiter:
    def __init__(self, redis: aioredis.Redis, per_minute: int) -> None:
        self.redis = redis
        self.per_minute = per_minute
        self._count = redis.register_script(_COUNT_IN_WINDOW)

    async def allow(self, user_id: str) -> bool:
        key = f"rate_limit:user:{user_id}:messages"  # the seed's key
        count = await self._count(keys=[key], args=[RATE_WINDOW_S])
        return int(count) <= self.per_minute


class DedupCache:
    """`message:dedup:{hash}` -> the ack already sent, so a quick retry costs one GET."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis

    @staticmethod
    def key(conversation_id: str, sender_id: str, client_message_id: str) -> str:
        digest = hashlib.sha256(f"{conversation_id}\x00{sender_id}\x00{client_message_id}".encode()).hexdigest()
        return f"message:dedup:{digest[:32]}"

    async def get(self, conversation_id: str, sender_id: str, client_message_id: str) -> str | None:
        raw = await self.redis.get(self.key(conversation_id, sender_id, client_message_id))
        return raw.decode() if isinstance(raw, bytes) else raw

    async def put(self, conversation_id: str, sender_id: str, client_message_id: str, ack: str) -> None:
        await self.redis.set(self.key(conversation_id, sender_id, client_message_id), ack, ex=DEDUP_TTL_S)


# Refresh the expiry; a start goes to the write side only if the user is not already listed as
# typing (the relay keeps that set) and no start went out in the last few seconds.
_REFRESH_TYPING = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
if redis.call('SISMEMBER', KEYS[2], ARGV[3]) == 1 then return 0 end
if redis.call('SET', KEYS[3], 1, 'NX', 'EX', ARGV[4]) then return 1 end
return 0
"""


class TypingGate:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._pop_expired = redis.register_script(_POP_EXPIRED)
        self._refresh = redis.register_script(_REFRESH_TYPING)

    async def refresh(self, conversation_id: str, user_id: str) -> bool:
        """Note that the user is typing; True when a start should go to the write side now.

        A refresh of someone already typing costs one Redis call and nothing else: sending it
        to the write side would be a no-op command competing with messages for the writer."""
        member = f"{conversation_id}|{user_id}"
        started = await self._refresh(
            keys=[TYPING_EXPIRIES_KEY, TYPING_KEY.format(conversation_id), f"typing:throttle:{member}"],
            args=[time.time() + TYPING_EXPIRY_S, member, user_id, TYPING_START_THROTTLE_S],
        )
        return bool(started)

    async def stop(self, conversation_id: str, user_id: str) -> None:
        await self.redis.zrem(TYPING_EXPIRIES_KEY, f"{conversation_id}|{user_id}")

    async def sent(self, conversation_id: str, user_id: str) -> None:
        """A message ends typing: forget the expiry and the start throttle."""
        member = f"{conversation_id}|{user_id}"
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrem(TYPING_EXPIRIES_KEY, member)
            pipe.delete(f"typing:throttle:{member}")
            await pipe.execute()

    async def expired(self) -> list[tuple[str, str]]:
        """(conversation, user) pairs whose typing lapsed; each is returned to one caller."""
        due = await self._pop_expired(keys=[TYPING_EXPIRIES_KEY], args=[time.time()])
        pairs = []
        for member in due:
            text = member.decode() if isinstance(member, bytes) else member
            conversation_id, _, user_id = text.partition("|")
            pairs.append((conversation_id, user_id))
        return pairs
