"""Resolvers of the Query root type."""

from __future__ import annotations

from typing import Any

from interfaces.graphql.context import context_of


async def viewer(_: Any, __: dict[str, Any], ctx: dict[str, Any], ___: Any) -> dict[str, Any]:
    return {"id": context_of(ctx).require_user()}


QUERY_RESOLVERS = {
    "Query.viewer": viewer,
}
