"""`POST /graphql`: JSON in, GraphQL result out; the bearer token names the user.

Every document is measured before tartiflette sees it (`interfaces.graphql.limits`): too deep,
too costly, unparseable or, outside development, introspecting documents are answered here.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from tartiflette import Engine

from interfaces.errors import error_code, public_message
from interfaces.graphql.context import RequestContext
from interfaces.graphql.limits import QueryRefusedError, check_query
from interfaces.runtime import Runtime

MAX_GRAPHQL_BODY_BYTES = 256 * 1024  # a 4,000-character message is at most 16 KB of UTF-8


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _error_response(message: str, code: str, status: int) -> JSONResponse:
    return JSONResponse({"data": None, "errors": [{"message": message, "extensions": {"code": code}}]}, status)


def _bad_request(message: str, status: int = 400) -> JSONResponse:
    return _error_response(message, "BAD_USER_INPUT", status)


def _refused(error: QueryRefusedError) -> JSONResponse:
    # 200, like tartiflette's own syntax and validation errors: the request was a well-formed
    # GraphQL request, so the outcome travels in `errors`, whichever check caught it.
    return _error_response(public_message(error), error_code(error), 200)


async def _read_operation(request: Request) -> dict[str, Any] | JSONResponse:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_GRAPHQL_BODY_BYTES:
        return _bad_request("request body too large", 413)
    body = await request.body()
    if len(body) > MAX_GRAPHQL_BODY_BYTES:
        return _bad_request("request body too large", 413)
    try:
        operation = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # deeply nested JSON overflows the decoder
        return _bad_request("the body must be JSON: {\"query\": ..., \"variables\": {...}}")
    if not isinstance(operation, dict) or not isinstance(operation.get("query"), str):
        return _bad_request("the body must hold a \"query\" string")
    variables = operation.get("variables")
    if variables is not None and not isinstance(variables, dict):
        return _bad_request("\"variables\" must be an object")
    return operation


def graphql_endpoint(runtime: Runtime, engine_holder: dict[str, Engine]) -> Any:
    async def endpoint(request: Request) -> JSONResponse:
        operation = await _read_operation(request)
        if isinstance(operation, JSONResponse):
            return operation
        try:
            check_query(operation["query"], operation.get("variables"), allow_introspection=runtime.is_development)
        except QueryRefusedError as refusal:
            return _refused(refusal)
        context = RequestContext(runtime=runtime, user_id=runtime.user_for_token(bearer_token(request)))
        result = await engine_holder["engine"].execute(
            operation["query"],
            variables=operation.get("variables"),
            operation_name=operation.get("operationName"),
            context={"request_context": context},
        )
        return JSONResponse(result)

    return endpoint
