"""How far the Postgres read model has got, pushed to every api process by NOTIFY.

The runner NOTIFYs `loopify_projection` with its new position in the transaction that applies
a batch, so the notification arrives exactly when the change is visible. Coroutines wait for a
position with `wait_for`; nothing polls on the hot path. A slow safety re-read covers a
dropped connection (notifications sent while disconnected are lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import asyncpg

from projections.runner import POSITION_CHANNEL

log = logging.getLogger(__name__)

SAFETY_REFRESH_S = 1.0  # re-read the position this often in case a NOTIFY was missed
RECONNECT_DELAY_S = 1.0


class PositionWatcher:
    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.position = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._connection: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._connect()
        self._task = asyncio.create_task(self._keep_fresh(), name="position-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()
        for _, future in self._waiters:
            if not future.done():
                future.cancel()

    async def wait_for(self, position: int, timeout: float) -> bool:
        """True once the read model reached `position`; False if `timeout` passed first."""
        if self.position >= position:
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((position, future))
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
            return True
        except asyncio.TimeoutError:
            return self.position >= position
        finally:
            self._waiters = [(p, f) for p, f in self._waiters if f is not future]

    def _advance(self, position: int) -> None:
        if position <= self.position:
            return
        self.position = position
        still_waiting = []
        for wanted, future in self._waiters:
            if wanted <= position:
                if not future.done():
                    future.set_result(None)
            else:
                still_waiting.append((wanted, future))
        self._waiters = still_waiting

    def _on_notify(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        with contextlib.suppress(ValueError):
            self._advance(int(payload))

    async def _connect(self) -> None:
        self._connection = await asyncpg.connect(self.database_url)
        await self._connection.add_listener(POSITION_CHANNEL, self._on_notify)
        await self._refresh()

    async def _refresh(self) -> None:
        assert self._connection is not None
        try:
            value = await self._connection.fetchval("SELECT position FROM read.tracking WHERE name = 'postgres'")
        except asyncpg.UndefinedTableError:
            return  # no projector has created the read model yet
        if value is not None:
            self._advance(int(value))

    async def _keep_fresh(self) -> None:
        while True:
            await asyncio.sleep(SAFETY_REFRESH_S)
            try:
                if self._connection is None or self._connection.is_closed():
                    await self._connect()
                else:
                    await self._refresh()
            except Exception as error:
                log.warning("position watcher lost Postgres (%s); retrying", error)
                self._connection = None
                await asyncio.sleep(RECONNECT_DELAY_S)
