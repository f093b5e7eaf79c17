"""Cheap Redis checks around the write side: the send guard (rate limit, short-term dedup,
read-your-writes position, end of typing) and the typing gate."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from infrastructure.iteration_batch import IterationBatch
from infrastructure.redis_mux import Arg, RedisMux
from projections.ports import AsyncRedis
from projections.read_your_writes import POSITION_TTL_S, RAISE_POSITION_FUNCTION, write_position_key
from projections.relay import TYPING_KEY  # the set the relay keeps of who is typing

RATE_WINDOW_S = 60  # RATE_LIMIT_PER_MINUTE is per minute; a fixed window is simple and fair enough
DEDUP_TTL_S = 300  # the seed's 5 minutes: a client's retries happen within seconds
TYPING_START_THROTTLE_S = 3  # at most one "started typing" per user and conversation every 3 s
TYPING_EXPIRY_S = 6  # clients refresh every 3 s; two missed refreshes mean they stopped
TYPING_EXPIRIES_KEY = "typing:expiries"

log = logging.getLogger(__name__)

_POP_EXPIRED = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
return due
"""


# Before the commit: a quick retry gets the ack already sent (the seed's dedup key), anything
# else counts against the sender's window (INCR; the first hit starts the window: EXPIRE NX needs
# Redis 7, this works on 6.2). One call for every send of an event-loop iteration: KEYS are
# (dedup, counter) pairs, ARGV[1] the window, ARGV[1 + i] '1' when send i has a client id.
_ADMIT = """
local answers = {}
for i = 1, #KEYS / 2 do
  local cached = false
  if ARGV[i + 1] == '1' then cached = redis.call('GET', KEYS[2 * i - 1]) end
  if cached then
    answers[i] = {1, cached}
  else
    local count = redis.call('INCR', KEYS[2 * i])
    if count == 1 then redis.call('EXPIRE', KEYS[2 * i], ARGV[1]) end
    answers[i] = {0, count}
  end
end
return answers
"""

# After the commit: raise the sender's write position for read-your-writes (keep the larger: two
# devices may finish out of order), end their typing, remember the ack for retries. One call for
# the sends of an iteration: KEYS[1] the typing expiries, then (position, typing throttle, dedup)
# per send; ARGV[1] and ARGV[2] the TTLs, then (position or '', typing member, ack or '') per send.
_RECORD = (
    RAISE_POSITION_FUNCTION
    + """
local answers = {}
for i = 1, (#KEYS - 1) / 3 do
  local key, arg = 3 * i - 1, 3 * i
  if ARGV[arg] ~= '' then raise_position(KEYS[key], ARGV[arg], ARGV[1]) end
  redis.call('ZREM', KEYS[1], ARGV[arg + 1])
  redis.call('DEL', KEYS[key + 1])
  if ARGV[arg + 2] ~= '' then redis.call('SET', KEYS[key + 2], ARGV[arg + 2], 'EX', ARGV[2]) end
  answers[i] = 1
end
return answers
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
    retry_key: str | None  # where `record` keeps the ack for retries (None: no client id)


@dataclass(frozen=True)
class _Send:
    sender_id: str
    retry_key: str | None


@dataclass(frozen=True)
class _Record:
    conversation_id: str
    sender_id: str
    position: int | None
    retry_key: str | None
    ack: str | None


class SendGuard:
    """The Redis side of sending a message: one script before the commit, one after, each
    shared by the sends of an event-loop iteration (`IterationBatch`).

    Five separate commands per send (dedup, rate limit, write position, typing, dedup again)
    made Redis the largest cost of a send on the event loop; one script each per send was
    still 18% of the loop at 1,000 msg/s (py-spy, docs/performance.md)."""

    def __init__(self, redis: RedisMux, per_minute: int) -> None:
        self.per_minute = per_minute
        self._admit_script = redis.register_script(_ADMIT)
        self._record_script = redis.register_script(_RECORD)
        self._admits: IterationBatch[_Send] = IterationBatch(self._admit_all)
        self._records: IterationBatch[_Record] = IterationBatch(self._record_all)

    async def admit(self, conversation_id: str, sender_id: str, client_message_id: str | None) -> Admission:
        retry_key = dedup_key(conversation_id, sender_id, client_message_id) if client_message_id else None
        hit, value = await self._admits.add(_Send(sender_id, retry_key))
        if int(hit):
            return Admission(value.decode() if isinstance(value, bytes) else value, True, retry_key)
        return Admission(None, int(value) <= self.per_minute, retry_key)

    def record(
        self, conversation_id: str, sender_id: str, *, position: int | None, retry_key: str | None, ack: str | None
    ) -> None:
        """After the commit: the read-your-writes position, the end of the sender's typing, and
        the ack kept for retries under the admission's `retry_key`.

        The caller need not wait: the script is written to the connection before the next
        iteration handles any I/O, so it reaches Redis ahead of every later call of this node
        (the read that waits for the sender's writes among them). A failure is logged; the
        message is committed whatever happens here, and a retry finds it in the event store."""
        self._records.add(_Record(conversation_id, sender_id, position, retry_key, ack)).add_done_callback(
            _log_failed_record
        )

    def _admit_all(self, sends: Sequence[_Send]) -> asyncio.Future[Any]:
        keys: list[Arg] = []
        has_client_id: list[Arg] = []
        for send in sends:
            counter = rate_limit_key(send.sender_id)
            # Without a client id there is nothing to look up; the key slot still needs a name.
            keys += [send.retry_key or counter, counter]
            has_client_id.append("1" if send.retry_key else "0")
        return self._admit_script.issue(keys, [RATE_WINDOW_S, *has_client_id])

    def _record_all(self, records: Sequence[_Record]) -> asyncio.Future[Any]:
        keys: list[Arg] = [TYPING_EXPIRIES_KEY]
        args: list[Arg] = [POSITION_TTL_S, DEDUP_TTL_S]
        for record in records:
            member = _typing_member(record.conversation_id, record.sender_id)
            kept = record.ack if record.retry_key else None  # only a retry with its client id asks for it
            # Nothing to keep: the dedup key's slot still needs a name (the typing member's).
            keys += [write_position_key(record.sender_id), _typing_throttle_key(member), record.retry_key or member]
            args += ["" if record.position is None else record.position, member, kept or ""]
        return self._record_script.issue(keys, args)


def _log_failed_record(reply: asyncio.Future[Any]) -> None:
    if not reply.cancelled() and (error := reply.exception()) is not None:
        log.warning("after a committed send, Redis did not record it (%s); its retries reach the event store", error)


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
