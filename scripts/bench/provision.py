"""Before the traffic: conversations over GraphQL (`startConversation`, as a client would), and
/health polling until every node's read model has caught up with them.

A device's socket subscribes to the conversations the read model lists for it when it
connects, so the bench connects only once the projection has reached the log's head.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx

from scripts.bench.plan import GROUP, Plan

START_CONVERSATION = "mutation($i: StartConversationInput!) { startConversation(input: $i) { id } }"
SETUP_CONCURRENCY = 16  # mutations in flight: enough to overlap commits, few enough not to queue
# One mutation commits one event; a 1,000-member group also projects 1,000 participant rows.
GRAPHQL_TIMEOUT_S = 60.0
CATCH_UP_TIMEOUT_S = 120.0  # thousands of conversations project in seconds; this only bounds a stuck runner
HEALTH_TIMEOUT_S = 2.0
POLL_S = 0.1

Mint = Callable[[str], str]


class SetupError(RuntimeError):
    """The servers refused or failed the setup; the run cannot start."""


async def start_conversations(base_url: str, plan: Plan, mint: Mint) -> dict[int, str]:
    """Create every planned conversation; returns conversation key -> id."""
    limit = asyncio.Semaphore(SETUP_CONCURRENCY)
    ids: dict[int, str] = {}
    async with httpx.AsyncClient(base_url=base_url, timeout=GRAPHQL_TIMEOUT_S) as http:

        async def start(key: int) -> None:
            conversation = plan.conversations[key]
            starter, *others = conversation.members
            variables: dict[str, Any] = {
                "type": conversation.kind,
                "participantIds": [plan.user_id(user) for user in others],
            }
            if conversation.kind == GROUP:
                variables["title"] = f"bench group {key}"
            async with limit:
                response = await http.post(
                    "/graphql",
                    json={"query": START_CONVERSATION, "variables": {"i": variables}},
                    headers={"Authorization": f"Bearer {mint(plan.user_id(starter))}"},
                )
            body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
            if response.status_code != 200 or body.get("errors") or not body.get("data"):
                raise SetupError(f"startConversation failed ({response.status_code}): {response.text[:500]}")
            ids[key] = body["data"]["startConversation"]["id"]

        await asyncio.gather(*(start(conversation.key) for conversation in plan.conversations))
    return ids


def health(client: httpx.Client, health_url: str) -> dict[str, Any] | None:
    """The node's /health body, or None when it does not answer."""
    try:
        body = client.get(f"{health_url}/health", timeout=HEALTH_TIMEOUT_S).json()
    except (httpx.HTTPError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def projection_lag(body: dict[str, Any] | None) -> int | None:
    """`projection.lag`: events between the log's head and the node's read model, if reported."""
    projection = body.get("projection") if body else None
    lag = projection.get("lag") if isinstance(projection, dict) else None
    return lag if isinstance(lag, int) else None


def wait_for_projection(health_urls: list[str], timeout_s: float = CATCH_UP_TIMEOUT_S) -> None:
    """Bounded poll until every node reports a projection lag of 0 (a node that answers without
    a projection section has nothing to wait for)."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client() as client:
        for url in health_urls:
            while True:
                body = health(client, url)
                lag = projection_lag(body)
                if body is not None and (lag is None or lag == 0):
                    break
                if time.monotonic() > deadline:
                    raise SetupError(f"{url}: the projection is not caught up after {timeout_s:.0f} s (lag {lag})")
                time.sleep(POLL_S)
