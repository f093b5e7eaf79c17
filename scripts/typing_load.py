"""Typing load to run beside `loopify bench --url`: does typing traffic slow message sending?

    python scripts/typing_load.py --url http://127.0.0.1:4000 --jwt-secret S --users 500 --every 1 --duration 30

Each user starts a DIRECT conversation, opens a /ws socket and sends `typing {isTyping: true}`
every `--every` seconds (real clients refresh every 3 s; 1 s is three times the real load).
Bounded in users and time; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import httpx
import jwt
import orjson
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

START = "mutation($i: StartConversationInput!) { startConversation(input: $i) { id } }"
MAX_USERS = 5000  # bounds the load whatever the arguments


async def typist(ws_url: str, token: str, conversation_id: str, every: float, until: float, counts: list[int]) -> None:
    async with websockets.connect(f"{ws_url}/ws?token={token}", max_size=None) as socket:
        frame = orjson.dumps({"event": "typing", "data": {"conversationId": conversation_id, "isTyping": True}})
        while time.monotonic() < until:
            await socket.send(frame.decode())
            counts[0] += 1
            await asyncio.sleep(every)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--jwt-secret", required=True)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--every", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=30.0)
    args = parser.parse_args()
    users = min(args.users, MAX_USERS)
    tokens = [
        jwt.encode({"sub": f"typist{i}", "exp": int(time.time()) + 3600}, args.jwt_secret, algorithm="HS256")
        for i in range(users)
    ]
    async with httpx.AsyncClient(base_url=args.url, timeout=30) as http:
        conversations = []
        for i, token in enumerate(tokens):
            body = {"query": START, "variables": {"i": {"type": "DIRECT", "participantIds": [f"typist{i}-peer"]}}}
            reply = await http.post("/graphql", json=body, headers={"Authorization": f"Bearer {token}"})
            conversations.append(reply.json()["data"]["startConversation"]["id"])
    counts = [0]
    until = time.monotonic() + args.duration
    ws_url = args.url.replace("http", "ws", 1)
    await asyncio.gather(*(typist(ws_url, t, c, args.every, until, counts) for t, c in zip(tokens, conversations)))
    print(f"sent {counts[0]} typing frames from {users} users in {args.duration:.0f} s")


if __name__ == "__main__":
    asyncio.run(main())
