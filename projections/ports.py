"""What projections need from the write side, declared here (the composition root wires it)."""

from __future__ import annotations

from typing import Any, Protocol


class BulkMessageSource(Protocol):
    schema: str
    events_table: str
    message_sent_topic: str


class EventLog(Protocol):
    """The event log, read in notification-id order (= commit order, thanks to the table lock)."""

    def read_log(
        self, after: int, limit: int, *, stop: int | None = None, exclude_topic: str | None = None
    ) -> list[tuple[int, Any]]:
        """Up to `limit` (position, domain event) pairs with `after` < position (<= `stop`),
        optionally skipping one event topic."""
        ...

    def bulk_message_source(self) -> BulkMessageSource | None:
        """Where MessageSent rows can be read by SQL directly, or None when the stored state is
        not plain JSON of the current event shape (a cipher, compression, or upcasters)."""
        ...

    def log_head(self) -> int:
        """The highest position written so far (0 for an empty log)."""
        ...

    @property
    def log_channel(self) -> str:
        """The Postgres NOTIFY channel signalled on every append."""
        ...


class AsyncRedis(Protocol):
    """The few async Redis calls the hot path makes: redis-py's client and our pipelined
    `infrastructure.redis_mux.RedisMux` both provide them."""

    def register_script(self, source: str) -> Any:
        """A callable `script(keys=[...], args=[...])` running the Lua source."""
        ...

    async def get(self, key: str) -> Any: ...

    async def set(self, key: str, value: Any, *, ex: int | None = None) -> Any: ...

    async def zrem(self, key: str, *members: Any) -> Any: ...
