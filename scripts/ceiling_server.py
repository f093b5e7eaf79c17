"""The chat bench's ceiling on this machine: the real gateway's socket path with nothing behind it
(docs/performance.md, "The eleventh session").

    python scripts/ceiling_server.py --port 4200 --jwt-secret benchsecret
    loopify bench --url http://127.0.0.1:4200 --jwt-secret benchsecret --scenario chat --max ...

It is not part of the service and no test uses it in place of one. It answers the bench's
calls the way `loopify serve` does (the `startConversation` mutation, `/health`, `/ws` with
`?token=`), served the same way (`bootstrap.run_server`: the uvicorn and garbage-collector
settings) and with the same socket path (`Connection`, frames written straight to the
transport), but a `send_message` touches no Postgres, no Redis and no projector: it numbers the message in memory, acks it and hands it to the other member's
sockets in the same call. Only the two frames the contract requires of every chat message are
sent (the ack and `message_received`; no `unread_count`), so the rate the bench reaches here is
an upper bound for the whole service on the same machine: the load generator and the
WebSocket work alone, with the machine's both cores to themselves.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402
from starlette.routing import Route, WebSocketRoute  # noqa: E402
from starlette.websockets import WebSocket, WebSocketDisconnect  # noqa: E402

from application.results import MessageRecord  # noqa: E402
from infrastructure.jwt_tokens import JwtCodec  # noqa: E402
from interfaces.serialization import message_json  # noqa: E402
from interfaces.ws.connection import Connection  # noqa: E402
from interfaces.ws.protocol import parse_frame  # noqa: E402
from interfaces.ws.wire import direct_writer, keep_raw_send  # noqa: E402


class Rooms:
    """Conversations (members, next seq) and the sockets of each user, in memory."""

    def __init__(self) -> None:
        self.members: dict[str, list[str]] = {}
        self.last_seq: dict[str, int] = defaultdict(int)
        self.sockets: dict[str, set[Connection]] = defaultdict(set)

    def start(self, starter: str, others: list[str]) -> str:
        conversation_id = str(uuid.uuid4())
        self.members[conversation_id] = [starter, *others]
        return conversation_id

    def send(self, sender: str, conversation_id: str, data: dict[str, Any]) -> dict[str, Any]:
        """The new message as the contract's Message JSON (the server's own `message_json`)."""
        self.last_seq[conversation_id] += 1
        record = MessageRecord(
            id=uuid.uuid4(),
            conversation_id=uuid.UUID(conversation_id),
            sender_id=sender,
            content=data["content"],
            message_type="TEXT",
            parent_message_id=None,
            seq=self.last_seq[conversation_id],
            client_message_id=data.get("clientMessageId"),
            created_at=datetime.now(timezone.utc),
        )
        return message_json(record)

    def deliver(self, sender: str, conversation_id: str, message: dict[str, Any]) -> None:
        # One encode per fan-out, as the relay does.
        data = {"message": message, "conversationId": conversation_id}
        text = orjson.dumps({"event": "message_received", "data": data}).decode()
        for member in self.members[conversation_id]:
            if member != sender:
                for connection in self.sockets[member]:
                    connection.send_text(text)


def create_app(secret: str) -> Any:
    codec = JwtCodec(secret)
    rooms = Rooms()

    async def graphql(request: Request) -> JSONResponse:
        user = codec.authenticate(request.headers.get("authorization", "")[7:])
        body = await request.json()
        if user is None or "startConversation" not in body.get("query", ""):
            return JSONResponse({"errors": [{"message": "only startConversation, authenticated"}]}, status_code=400)
        conversation_id = rooms.start(user, list(body["variables"]["i"]["participantIds"]))
        return JSONResponse({"data": {"startConversation": {"id": conversation_id}}})

    async def health(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        user = codec.authenticate(websocket.query_params.get("token", ""))
        if user is None:
            await websocket.close(4401)
            return
        connection = Connection(websocket, user, direct=direct_writer(websocket.scope))
        connection.start()
        rooms.sockets[user].add(connection)
        connection.send("connected", {"userId": user})
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                frame = parse_frame(message["text"])
                if frame.event == "send_message":
                    conversation_id = frame.data["conversationId"]
                    sent = rooms.send(user, conversation_id, frame.data)
                    connection.send("ack", {"message": sent}, frame.request_id)
                    rooms.deliver(user, conversation_id, sent)
                elif frame.request_id is not None:
                    connection.send("ack", {}, frame.request_id)
        except WebSocketDisconnect:
            return
        finally:
            rooms.sockets[user].discard(connection)
            await connection.stop()

    routes = [Route("/graphql", graphql, methods=["POST"]), Route("/health", health), WebSocketRoute("/ws", ws)]
    app = Starlette(routes=routes)
    return keep_raw_send(app)


def main() -> int:
    from bootstrap import run_server

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=4200)
    parser.add_argument("--jwt-secret", required=True)
    options = parser.parse_args()
    # Loopback only: a calibration tool, never a service.
    run_server(create_app(options.jwt_secret), "127.0.0.1", options.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
