"""`GET /health` in the seed's JSON shape, plus database, Redis and writer figures.

200 when healthy or degraded (Redis down: messages are still persisted); 503 when this node
cannot accept messages (database down, or its writer stopped).
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from interfaces.runtime import Runtime

PROBE_TIMEOUT_S = 2.0  # a health check must answer even when a dependency hangs


async def _probe(runtime: Runtime, name: str) -> bool:
    probe = runtime.probes.get(name)
    if probe is None:
        return False
    try:
        return await asyncio.wait_for(probe(), PROBE_TIMEOUT_S)
    except Exception:
        return False


def health_endpoint(runtime: Runtime) -> Any:
    async def endpoint(_: Request) -> JSONResponse:
        database_ok, redis_ok = await asyncio.gather(_probe(runtime, "database"), _probe(runtime, "redis"))
        accepts_commands = runtime.role in ("all", "api")
        writer_running = runtime.service is not None and runtime.service.writer.is_running
        writer_ok = writer_running or not accepts_commands
        if not database_ok or not writer_ok:
            status = "error"
        elif not redis_ok:
            status = "degraded"
        else:
            status = "ok"
        body: dict[str, Any] = {
            "status": status,
            "role": runtime.role,
            "messaging": {
                "socketGateway": {
                    "status": "healthy" if runtime.hub is not None or not accepts_commands else "unhealthy",
                    "onlineUsers": runtime.hub.online_users if runtime.hub is not None else 0,
                },
                "messageQueue": {
                    "status": "healthy" if writer_ok else "unhealthy",
                    "isRunning": writer_running,
                    "queueStats": {"normalPriorityCount": 0, "highPriorityCount": 0, "deadLetterCount": 0},
                },
                "pushNotification": {"status": "healthy"},
            },
            "database": {"status": "healthy" if database_ok else "unhealthy"},
            "redis": {"status": "healthy" if redis_ok else "unhealthy"},
        }
        if runtime.projection_status is not None:
            try:
                body["projection"] = await asyncio.wait_for(runtime.projection_status(), PROBE_TIMEOUT_S)
            except Exception:
                body["projection"] = {"status": "unknown"}
        if runtime.writer_stats is not None:
            body["writer"] = {**runtime.writer_stats(), "queueDepth": runtime.service.writer.queue_depth()}  # type: ignore[union-attr]
        return JSONResponse(body, status_code=503 if status == "error" else 200)

    return endpoint
