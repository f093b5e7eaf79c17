"""One operation of a graphql-ws socket, from `subscribe` to its last message.

Subscriptions run through tartiflette's own machinery (`engine.subscribe`): the `@Subscription`
generators in `subscriptions.py` are the source streams, and tartiflette executes the client's
selection set on every event, so each `next` payload is a regular GraphQL result. Queries and
mutations are single-result operations: one `next`, then `complete`.

What a source stream needs from the socket travels in the GraphQL context as an
`OperationScope`: it opens the feeds the stream reads, and says when the stream is live (its
feeds are open and access was checked). Errors before that point are answered with an `error`
message (the operation never started); later ones end the stream with `error` as well, since
`error` terminates an operation in this protocol; a stream that ends sends `complete`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from tartiflette import Engine

from interfaces.graphql.context import RequestContext
from interfaces.graphql.engine import coerce_error
from interfaces.graphql.limits import parse_query
from interfaces.graphql_ws.feeds import SCOPE_KEY, OperationScope
from interfaces.graphql_ws.protocol import Subscribe, complete_message, error_message, next_message

Send = Callable[[str], Awaitable[None]]


def operation_kind(query: str, operation_name: str | None) -> str | None:
    """`query`, `mutation` or `subscription`; None when the document does not name one
    operation clearly (tartiflette then explains why)."""
    try:
        definitions = parse_query(query).get("definitions") or []
    except Exception:
        return None
    operations = [node for node in definitions if node.get("kind") == "OperationDefinition"]
    if operation_name is not None:
        operations = [node for node in operations if (node.get("name") or {}).get("value") == operation_name]
    if len(operations) != 1:
        return None
    return str(operations[0].get("operation") or "query")


async def run_operation(
    engine: Engine, request: RequestContext, scope: OperationScope, message: Subscribe, send: Send
) -> None:
    context = {"request_context": request, SCOPE_KEY: scope}
    try:
        if operation_kind(message.query, message.operation_name) in ("query", "mutation"):
            scope.now_live()  # one result, no stream: the socket need not wait for it
            result = await engine.execute(
                message.query, operation_name=message.operation_name, context=context, variables=message.variables
            )
            await send(next_message(message.id, result))
        else:
            if not await _stream(engine, context, scope, message, send):
                return
        await send(complete_message(message.id))
    except Exception as error:  # (a client's `complete` cancels the task: that is no error)
        if type(error) is Exception and not scope.entered:
            # tartiflette's words for a root field without a source stream (`__typename`).
            refusal = {"message": str(error), "extensions": {"code": "BAD_USER_INPUT"}}
        else:
            refusal = await coerce_error(error, {"message": str(error)})
        await send(error_message(message.id, [refusal]))
    finally:
        scope.close()


async def _stream(engine: Engine, context: dict[str, Any], scope: OperationScope, message: Subscribe, send: Send) -> bool:
    """Forward every result of the subscription; False when it was refused before starting."""
    results = engine.subscribe(
        message.query, operation_name=message.operation_name, context=context, variables=message.variables
    )
    try:
        async for result in results:
            if not scope.live.done():
                # Parsing, validation or variables failed: the source stream never started.
                await send(error_message(message.id, result.get("errors") or [{"message": "subscription refused"}]))
                return False
            await send(next_message(message.id, result))
    finally:
        await results.aclose()
    return True
