"""Cheap Redis checks around the write side: the send guard (rate limit, short-term dedup,
read-your-writes position, end of typing) and the typing gate."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from projections.ports import AsyncRedis
from projections.read_your_writes import POSITION_TTL_S, RAISE_POSITION_STEP, write_position_key
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


# Before the commit, one call: a quick retry gets the ack already sent (the seed's dedup key),
# anything else counts against the sender's window (INCR; the first hit starts the window:
# EXPIRE NX needs Redis 7, this works on 6.2).
_ADMIT = """
if ARGV[1] == '1' then
  local cached = redis.call('GET', KEYS[1])
  if cached then return {1, cached} end
end
local count = redis.call('INCR', KEYS[2])
if count == 1 then redis.call('EXPIRE', KEYS[2], ARGV[2]) end
return {0, count}
"""

# After the commit, one call: raise the sender's write position for read-your-writes (keep the
# larger: two devices may finish out of order), end their typing, remember the ack for retries.
_RECORD = (
    "if ARGV[1] ~= '' then\n"
    + RAISE_POSITION_STEP
    + """end
redis.call('ZREM', KEYS[2], ARGV[3])
redis.call('DEL', KEYS[3])
if ARGV[4] ~= '' then redis.call('SET', KEYS[4], ARGV[4], 'EX', ARGV[5]) end
return 1
"""
)


def dedup_key(conversation_id: str, sender_id: str, client_message_id: str) -> str:
    """`message:dedup:{hash}` (the seed's key) -> the ack already sent for this client id."""
    digest = hashlib.sha256(f"{conversation_id}\x00{sender_id}\x00{client_message_id}".encode()).hexdigest()
    return f"message:dedup:{digest[:32]}"


def rate_limit_key(user_id: str) -> str:
    return f"rate_limit:user:{user_id}:messages"  # the seed's key


def _typing_member(conversation_id: str, user_id: str) -> str:
    return f"{conversation_id}|{user_id}"


def _typing_throttle_key(member: str) -> str:
    return f"typing:throttle:{member}"


@dataclass(frozen=True)
class Admission:
    cached_ack: str | None  # a retry of a message already sent: answer with this, send nothing
    allowed: bool  # False: over RATE_LIMIT_PER_MINUTE


class SendGuard:
    """The Redis side of sending a message: one round trip before the commit, one after.

    Five separate commands per send (dedup, rate limit, write position, typing, dedup again)
    made Redis the largest cost of a send on the event loop."""

    def __init__(self, redis: AsyncRedis, per_minute: int) -> None:
        self.per_minute = per_minute
        self._admit = redis.register_script(_ADMIT)
        self._record = redis.register_script(_RECORD)

    async def admit(self, conversation_id: str, sender_id: str, client_message_id: str | None) -> Admission:
        dedup = dedup_key(conversation_id, sender_id, client_message_id) if client_message_id else rate_limit_key(sender_id)
        hit, value = await self._admit(
            keys=[dedup, rate_limit_key(sender_id)], args=["1" if client_message_id else "0", RATE_WINDOW_S]
        )
        if int(hit):
            return Admission(value.decode() if isinstance(value, bytes) else value, True)
        return Admission(None, int(value) <= self.per_minute)

    async def record(
        self, conversation_id: str, sender_id: str, *, position: int | None, client_message_id: str | None, ack: str | None
    ) -> None:
        """After the commit: the read-your-writes position, the end of the sender's typing, and
        the ack kept for retries (`ack` is given only with a `client_message_id`)."""
        member = _typing_member(conversation_id, sender_id)
        # Without a client id nothing is remembered; the key slot still needs a name.
        dedup = dedup_key(conversation_id, sender_id, client_message_id) if client_message_id and ack else member
        await self._record(
            keys=[write_position_key(sender_id), TYPING_EXPIRIES_KEY, _typing_throttle_key(member), dedup],
            args=[
                "" if position is None else position,
                POSITION_TTL_S,
                member,
                ack or "",
                DEDUP_TTL_S,
            ],
        )


# Refresh the expiry; a start goes to the write side only if the user is not already listed as
# typing (the relay keeps that set) and no start went out in the last few seconds.
_REFRESH_TYPING = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
if redis.call('SISMEMBER', KEYS[2], ARGV[3]) == 1 then return 0 end
if redis.call('SET', KEYS[3], 1, 'NX', 'EX', ARGV[4]) then return 1 end
return 0
"""


class TypingGate:
    def __init__(self, redis: AsyncRedis) -> None:
        self.redis = redis
        self._pop_expired = redis.register_script(_POP_EXPIRED)
        self._refresh = redis.register_script(_REFRESH_TYPING)

    async def refresh(self, conversation_id: str, user_id: str) -> bool:
        """Note that the user is typing; True when a start should go to the write side now.

        A refresh of someone already typing costs one Redis call and nothing else: sending it
        to the write side would be a no-op command competing with messages for the writer."""
        member = _typing_member(conversation_id, user_id)
        started = await self._refresh(
            keys=[TYPING_EXPIRIES_KEY, TYPING_KEY.format(conversation_id), _typing_throttle_key(member)],
            args=[time.time() + TYPING_EXPIRY_S, member, user_id, TYPING_START_THROTTLE_S],
        )
        return bool(started)

    async def stop(self, conversation_id: str, user_id: str) -> None:
        await self.redis.zrem(TYPING_EXPIRIES_KEY, _typing_member(conversation_id, user_id))

    async def expired(self) -> list[tuple[str, str]]:
        """(conversation, user) pairs whose typing lapsed; each is returned to one caller."""
        due = await self._pop_expired(keys=[TYPING_EXPIRIES_KEY], args=[time.time()])
        pairs = []
        for member in due:
            text = member.decode() if isinstance(member, bytes) else member
            conversation_id, _, user_id = text.partition("|")
            pairs.append((conversation_id, user_id))
        return pairs
