"""Read-your-writes: a query waits until the read model shows the user's own last command.

Each command returns the log position of its last event; the interface records it per user in
Redis (so it holds across api nodes), and a later read by that user waits, push-notified, until
the projection passed it. The wait is bounded: past `WAIT_TIMEOUT_S` the read goes ahead
(slightly stale) rather than failing, and the lag shows in /health.
"""

from __future__ import annotations

import logging

from projections.position_watcher import PositionWatcher
from projections.ports import AsyncRedis

log = logging.getLogger(__name__)

WAIT_TIMEOUT_S = 5.0  # a healthy projector lags by milliseconds; seconds mean it is down
POSITION_TTL_S = 300  # after five minutes any live projection has long passed the position

# Keep the larger position: commands from two devices may finish out of order. A Lua function,
# shared with the send guard's script.
RAISE_POSITION_FUNCTION = """
local function raise_position(key, position, ttl)
  local current = tonumber(redis.call('GET', key) or '0')
  if tonumber(position) > current then redis.call('SET', key, position, 'EX', ttl)
  else redis.call('EXPIRE', key, ttl) end
end
"""
_RAISE_POSITION = RAISE_POSITION_FUNCTION + "raise_position(KEYS[1], ARGV[1], ARGV[2])\nreturn 1\n"


def write_position_key(user_id: str) -> str:
    return f"user:write_position:{user_id}"


class ReadYourWrites:
    def __init__(self, redis: AsyncRedis, watcher: PositionWatcher) -> None:
        self.redis = redis
        self.watcher = watcher
        self._raise = redis.register_script(_RAISE_POSITION)

    async def note_write(self, user_id: str, position: int | None) -> None:
        if position is None:
            return
        await self._raise(keys=[write_position_key(user_id)], args=[position, POSITION_TTL_S])

    async def wait_for_user(self, user_id: str) -> None:
        raw = await self.redis.get(write_position_key(user_id))
        if raw is None:
            return
        position = int(raw)
        if not await self.watcher.wait_for(position, WAIT_TIMEOUT_S):
            log.warning("read model still behind position %s after %.1f s", position, WAIT_TIMEOUT_S)
