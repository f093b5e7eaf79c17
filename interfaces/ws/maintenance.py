"""A node's periodic duties for the real-time layer, each in its own task.

- keep this node's devices alive in the presence store (a crashed node stops doing this,
  so its users go offline);
- sweep presence: announce users whose every device expired (any node may do it; the store
  hands each user to one sweeper);
- stop typing that was not refreshed for 6 s (TypingChanged(false) goes to the event store).
Each loop survives its own failures: one bad round never stops the next.
"""

from __future__ import annotations

import asyncio
import logging
from uuid import UUID

from interfaces.runtime import Runtime

log = logging.getLogger(__name__)

TYPING_SWEEP_S = 1.0  # typing stops within 6 s + this of the last refresh


async def keep_devices_alive(runtime: Runtime, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        try:
            devices = [(user, device.id) for user, group in runtime.hub.connections.items() for device in group]
            await runtime.presence.refresh(devices)
        except Exception:
            log.exception("presence refresh failed")


async def sweep_presence(runtime: Runtime, every_s: float) -> None:
    from interfaces.ws.endpoint import announce_presence

    while True:
        await asyncio.sleep(every_s)
        try:
            for user in await runtime.presence.sweep():
                await announce_presence(runtime, user, False)
        except Exception:
            log.exception("presence sweep failed")


async def stop_stale_typing(runtime: Runtime) -> None:
    while True:
        await asyncio.sleep(TYPING_SWEEP_S)
        try:
            for conversation_id, user in await runtime.typing_gate.expired():
                try:
                    await runtime.service.set_typing(user, UUID(conversation_id), False)  # type: ignore[union-attr]
                except Exception as error:  # the user left meanwhile: nothing to stop
                    log.debug("typing stop for %s in %s refused: %s", user, conversation_id, error)
        except Exception:
            log.exception("typing sweep failed")
