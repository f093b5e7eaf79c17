"""Per-request GraphQL context: the runtime and the authenticated user."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from application.service import MessagingService
from interfaces.errors import AuthenticationError, BadRequestError, InterfaceError
from interfaces.runtime import Runtime


@dataclass
class RequestContext:
    runtime: Runtime
    user_id: str | None

    def require_user(self) -> str:
        if self.user_id is None:
            raise AuthenticationError("a valid bearer token is required")
        return self.user_id

    @property
    def service(self) -> MessagingService:
        if self.runtime.service is None:
            raise InterfaceError("this node does not accept commands (role without a writer)")
        return self.runtime.service


    @property
    def read_model(self) -> Any:
        if self.runtime.read_model is None:
            raise InterfaceError("this node does not serve queries")
        return self.runtime.read_model

    async def before_read(self) -> str:
        """Authenticate, then wait until the projections show this user's own writes."""
        user = self.require_user()
        if self.runtime.wait_for_own_writes is not None:
            await self.runtime.wait_for_own_writes(user)
        return user

    async def after_write(self, position: int | None) -> None:
        if self.runtime.note_write is not None and self.user_id is not None:
            await self.runtime.note_write(self.user_id, position)


def context_of(ctx: dict[str, Any]) -> RequestContext:
    return ctx["request_context"]


def parse_id(raw: Any, field: str) -> UUID:
    try:
        return UUID(str(raw))
    except ValueError:
        raise BadRequestError(f"{field} is not a valid id") from None
