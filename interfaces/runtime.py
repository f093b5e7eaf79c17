"""What the interfaces need at run time, filled in by the composition root at start-up.

The interfaces never import infrastructure: they receive callables and services here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from application.service import MessagingService

Probe = Callable[[], Awaitable[bool]]


@dataclass
class Runtime:
    role: str
    is_development: bool
    cors_origin: str | None
    service: MessagingService | None = None
    authenticate: Callable[[str], str | None] | None = None
    probes: dict[str, Probe] = field(default_factory=dict)
    writer_stats: Callable[[], dict[str, Any]] | None = None
    # The read side: `projections.queries.ReadModel`, and a coroutine that returns once the
    # projections show every command this user made so far (read-your-writes).
    read_model: Any = None
    wait_for_own_writes: Callable[[str], Awaitable[None]] | None = None
    # Records a user's write position so later reads (on any node) wait for it.
    note_write: Callable[[str, int | None], Awaitable[None]] | None = None
    projection_status: Callable[[], Awaitable[dict[str, Any]]] | None = None
    # The real-time layer (api roles): the node's fan-out hub, presence, and the Redis guards.
    hub: Any = None
    presence: Any = None
    send_guard: Any = None  # infrastructure.redis_guards.SendGuard
    typing_gate: Any = None

    def attach(self, **dependencies: Any) -> None:
        for name, value in dependencies.items():
            if not hasattr(self, name):
                raise AttributeError(f"Runtime has no dependency {name!r}")
            setattr(self, name, value)

    def user_for_token(self, token: str | None) -> str | None:
        if not token or self.authenticate is None:
            return None
        return self.authenticate(token)
