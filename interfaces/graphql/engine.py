"""The tartiflette engine: SDL + scalars + resolvers, and the error shape with `extensions.code`.

Subscription fields get their source streams (`@Subscription` generators) from
`interfaces.graphql_ws.subscriptions`; they run only over the graphql-transport-ws socket.

Tartiflette registers resolvers in a global registry per `schema_name`; building each engine
under its own name keeps several engines in one process (tests, multiple apps) apart.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

from tartiflette import Engine, Resolver, Subscription

from interfaces.errors import error_code, public_message
from interfaces.graphql.mutations import MUTATION_RESOLVERS
from interfaces.graphql.queries import QUERY_RESOLVERS
from interfaces.graphql.scalars import register_scalars
from interfaces.graphql_ws.subscriptions import SUBSCRIPTION_RESOLVERS

log = logging.getLogger(__name__)

SDL_PATH = Path(__file__).with_name("schema.graphql")
_engine_numbers = itertools.count(1)


async def coerce_error(exception: Exception, error: dict[str, Any]) -> dict[str, Any]:
    original = getattr(exception, "original_error", None) or exception
    if original is exception and type(exception).__module__.startswith("tartiflette"):
        # A GraphQL-level error (syntax, validation, unknown field): the caller's mistake.
        error.setdefault("extensions", {})["code"] = "BAD_USER_INPUT"
        return error
    code = error_code(original)
    if code == "INTERNAL":
        log.error("GraphQL resolver failed", exc_info=original)
    error["message"] = public_message(original)
    error.setdefault("extensions", {})["code"] = code
    return error


async def build_engine() -> Engine:
    schema_name = f"loopify_{next(_engine_numbers)}"
    register_scalars(schema_name)
    for field, resolver in {**QUERY_RESOLVERS, **MUTATION_RESOLVERS}.items():
        Resolver(field, schema_name=schema_name)(resolver)
    for field, source_stream in SUBSCRIPTION_RESOLVERS.items():
        Subscription(field, schema_name=schema_name)(source_stream)
    engine = Engine(SDL_PATH.read_text(), schema_name=schema_name, error_coercer=coerce_error)
    await engine.cook()
    return engine
