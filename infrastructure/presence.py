"""Presence in Redis: online while any device is connected, across every api node.

  user:online:{userId}     ZSET socketId -> expiry (epoch s); the seed's key, one entry per device
  socket:user:{socketId}   userId, with the same expiry (the seed's reverse lookup)
  user:last_seen:{userId}  ISO timestamp of the last activity
  presence:expiries        ZSET userId -> latest expiry of any of their devices

Each node refreshes its own sockets every `REFRESH_S`; entries live `TTL_S`. When a node
crashes its entries stop being refreshed, and the sweeper (any node, every `SWEEP_S`) removes
them: the user goes offline within TTL_S + SWEEP_S < 60 s. Transitions are decided by Lua
scripts, so exactly one node announces each online/offline change.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

from projections.ports import AsyncRedis


TTL_S = 45  # three missed refreshes: the node is gone, not just slow
REFRESH_S = 15
SWEEP_S = 10  # TTL_S + SWEEP_S = 55 s: a crashed node's users are offline within a minute

_CONNECT = """
local live = redis.call('ZCOUNT', KEYS[1], ARGV[2], '+inf')
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('SET', KEYS[2], ARGV[5], 'EX', ARGV[4])
redis.call('ZADD', KEYS[3], 'GT', ARGV[1], ARGV[5])
if redis.call('ZSCORE', KEYS[3], ARGV[5]) == false then redis.call('ZADD', KEYS[3], ARGV[1], ARGV[5]) end
return live == 0 and 1 or 0
"""

_DISCONNECT = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
redis.call('SET', KEYS[4], ARGV[3])
if redis.call('ZCOUNT', KEYS[1], ARGV[2], '+inf') == 0 then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[3], ARGV[4])
  return 1
end
return 0
"""

_SWEEP = """
local gone = {}
local candidates = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for _, user in ipairs(candidates) do
  local key = 'user:online:' .. user
  redis.call('ZREMRANGEBYSCORE', key, '-inf', ARGV[1])
  if redis.call('ZCARD', key) == 0 then
    redis.call('DEL', key)
    redis.call('ZREM', KEYS[1], user)
    table.insert(gone, user)
  else
    local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    redis.call('ZADD', KEYS[1], newest[2], user)
  end
end
return gone
"""

# One call per chunk of devices: a pipeline of five commands per device made redis-py parse
# 10,000 replies in Python every 15 s for 2,000 sockets and stalled the event loop for seconds.
# Key names are built here as in the functions below (keys are not declared: single Redis only).
_REFRESH = """
local expiry = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
for i = 3, #ARGV, 2 do
  local user, socket = ARGV[i], ARGV[i + 1]
  local key = 'user:online:' .. user
  redis.call('ZADD', key, expiry, socket)
  redis.call('EXPIRE', key, ttl)
  redis.call('SET', 'socket:user:' .. socket, user, 'EX', ttl)
  redis.call('ZADD', KEYS[1], 'GT', expiry, user)
  if redis.call('ZSCORE', KEYS[1], user) == false then redis.call('ZADD', KEYS[1], expiry, user) end
end
return 0
"""
REFRESH_CHUNK = 500  # devices per script call: Redis stays responsive to other clients in between

EXPIRIES_KEY = "presence:expiries"


def online_key(user_id: str) -> str:
    return f"user:online:{user_id}"


def socket_key(socket_id: str) -> str:
    return f"socket:user:{socket_id}"


def last_seen_key(user_id: str) -> str:
    return f"user:last_seen:{user_id}"


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


class PresenceStore:
    def __init__(self, redis: AsyncRedis) -> None:
        self.redis = redis
        self._connect = redis.register_script(_CONNECT)
        self._disconnect = redis.register_script(_DISCONNECT)
        self._sweep = redis.register_script(_SWEEP)
        self._refresh = redis.register_script(_REFRESH)

    async def connect(self, user_id: str, socket_id: str) -> bool:
        """Register a device; True when the user just came online."""
        now = time.time()
        came_online = await self._connect(
            keys=[online_key(user_id), socket_key(socket_id), EXPIRIES_KEY],
            args=[now + TTL_S, now, socket_id, TTL_S + SWEEP_S, user_id],
        )
        await self.redis.set(last_seen_key(user_id), _now_iso())
        return bool(came_online)

    async def disconnect(self, user_id: str, socket_id: str) -> bool:
        """Forget a device; True when it was the user's last one."""
        went_offline = await self._disconnect(
            keys=[online_key(user_id), socket_key(socket_id), EXPIRIES_KEY, last_seen_key(user_id)],
            args=[socket_id, time.time(), _now_iso(), user_id],
        )
        return bool(went_offline)

    async def refresh(self, devices: list[tuple[str, str]]) -> None:
        """Keep this node's devices alive (called every REFRESH_S)."""
        if not devices:
            return
        expiry = time.time() + TTL_S
        for start in range(0, len(devices), REFRESH_CHUNK):
            args: list[str | float] = [expiry, TTL_S + SWEEP_S]
            for user_id, socket_id in devices[start : start + REFRESH_CHUNK]:
                args += (user_id, socket_id)
            await self._refresh(keys=[EXPIRIES_KEY], args=args)

    async def touch(self, user_id: str) -> None:
        await self.redis.set(last_seen_key(user_id), _now_iso())

    async def sweep(self) -> list[str]:
        """Users whose every device expired (a crashed node's); each is returned to one caller."""
        gone = await self._sweep(keys=[EXPIRIES_KEY], args=[time.time()])
        return [user.decode() if isinstance(user, bytes) else user for user in gone]

    async def last_seen(self, user_id: str) -> str | None:
        raw = await self.redis.get(last_seen_key(user_id))
        return raw.decode() if isinstance(raw, bytes) else raw
