"""The Starlette application: routes and middleware; dependencies arrive in a `Runtime`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Route, WebSocketRoute
from tartiflette import Engine

from interfaces.graphql.engine import build_engine
from interfaces.graphql_ws.endpoint import graphql_ws_endpoint
from interfaces.http.graphiql import graphiql_endpoint
from interfaces.http.graphql_endpoint import graphql_endpoint
from interfaces.http.health import health_endpoint
from interfaces.runtime import Runtime
from interfaces.socket_io.gateway import with_socket_io
from interfaces.ws.endpoint import ws_endpoint
from interfaces.ws.wire import keep_raw_send

Lifespan = Callable[[Starlette], AbstractAsyncContextManager[None]]


def build_http_app(runtime: Runtime, lifespan: Lifespan) -> Any:
    """The ASGI app: Socket.IO at /socket.io/ in front of the Starlette routes."""
    engine_holder: dict[str, Engine] = {}

    @asynccontextmanager
    async def app_lifespan(app: Starlette) -> AsyncIterator[None]:
        engine_holder["engine"] = await build_engine()
        async with lifespan(app):
            yield

    middleware: list[Middleware] = []
    if runtime.cors_origin:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=[runtime.cors_origin],
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=["Authorization", "Content-Type"],
                allow_credentials=True,
            )
        )
    routes: list[Any] = [
        Route("/health", health_endpoint(runtime), methods=["GET"]),
        WebSocketRoute("/ws", ws_endpoint(runtime)),
        Route("/graphql", graphql_endpoint(runtime, engine_holder), methods=["POST"]),
        # Subscriptions (graphql-transport-ws): Starlette matches WebSocket scopes separately.
        WebSocketRoute("/graphql", graphql_ws_endpoint(runtime, engine_holder)),
        # The GraphiQL page in development; a 404 everywhere else.
        Route("/graphql", graphiql_endpoint(enabled=runtime.is_development), methods=["GET"]),
    ]
    app = Starlette(routes=routes, middleware=middleware, lifespan=app_lifespan)
    return keep_raw_send(with_socket_io(app, runtime, cors_origin=runtime.cors_origin))
