"""What projections need from the write side, declared here (the composition root wires it)."""

from __future__ import annotations

from typing import Any, Protocol


class EventLog(Protocol):
    """The event log, read in notification-id order (= commit order, thanks to the table lock)."""

    def read_log(self, after: int, limit: int) -> list[tuple[int, Any]]:
        """Up to `limit` (position, domain event) pairs with position > `after`."""
        ...

    def log_head(self) -> int:
        """The highest position written so far (0 for an empty log)."""
        ...

    @property
    def log_channel(self) -> str:
        """The Postgres NOTIFY channel signalled on every append."""
        ...
