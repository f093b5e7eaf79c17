"""The node's fan-out hub: subscribes to the Redis channels its connected users need and
delivers each published frame to the right local sockets.

A node subscribes to `user:{id}` for every connected user and to `conv:{id}` for every
conversation one of them belongs to, so it receives only the traffic of its own users. Each
published message is decoded once and its pre-encoded client frame forwarded untouched; the
one envelope without a frame, a conversation's unread totals, becomes one frame per total.

Gaps are filled from the read model, never guessed: when a user joins a conversation (the
first messages may be published before the node's SUBSCRIBE lands), and when the Redis link
comes back after an outage, the hub reads the messages after each device's last seq and
delivers them (devices drop what they already have, by seq).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from typing import Any
from uuid import UUID

import orjson
from broadcaster import Broadcast

from interfaces.serialization import message_json
from interfaces.ws.connection import Connection
# One naming and one frame shape, publisher and subscriber:
from projections.relay import conversation_channel, unread_frame, user_channel

log = logging.getLogger(__name__)

SUBSCRIBE_TIMEOUT_S = 5.0  # Redis confirms in milliseconds; seconds mean it is down
CATCH_UP_LIMIT = 500  # messages per conversation per catch-up; beyond that clients `sync`


class Hub:
    def __init__(self, broadcast: Broadcast, read_model: Any) -> None:
        self.broadcast = broadcast
        self.read_model = read_model
        self.connections: dict[str, set[Connection]] = defaultdict(set)  # user -> devices here
        self.members: dict[str, set[str]] = defaultdict(set)  # conversation -> local users in it
        self._listeners: dict[str, asyncio.Task[None]] = {}

    @property
    def online_users(self) -> int:
        return len(self.connections)

    # ---- devices -------------------------------------------------------------------------

    async def attach(self, connection: Connection) -> None:
        user = connection.user_id
        self.connections[user].add(connection)
        await self._subscribe(user_channel(user))
        conversations = await self.read_model.member_conversations(user)
        connection.seen_seq = {str(cid): last_seq for cid, last_seq in conversations.items()}
        for cid in connection.seen_seq:
            self.members[cid].add(user)
        await asyncio.gather(*(self._subscribe(conversation_channel(cid)) for cid in connection.seen_seq))
        # Anything committed between reading the seqs and the subscriptions landing:
        await self.catch_up(list(connection.seen_seq), [connection])

    async def detach(self, connection: Connection) -> None:
        user = connection.user_id
        devices = self.connections.get(user)
        if devices is None:
            return
        devices.discard(connection)
        if devices:
            return
        del self.connections[user]
        await self._unsubscribe(user_channel(user))
        for cid in list(connection.seen_seq):
            self._forget_member(cid, user)

    def devices(self, user_id: str) -> set[Connection]:
        return self.connections.get(user_id, set())

    # ---- catching up ---------------------------------------------------------------------

    async def catch_up(self, conversation_ids: list[str], connections: list[Connection] | None = None) -> None:
        """Deliver messages after each device's last seq, read from the read model."""
        for cid in conversation_ids:
            targets = connections if connections is not None else [
                device for user in self.members.get(cid, ()) for device in self.devices(user)
            ]
            targets = [device for device in targets if cid in device.seen_seq]
            if not targets:
                continue
            since = min(device.seen_seq[cid] for device in targets)
            try:
                messages = await self.read_model.messages_after(UUID(cid), since, CATCH_UP_LIMIT)
            except Exception:
                log.exception("catch-up of %s failed", cid)
                continue
            for message in messages:
                text = orjson.dumps(
                    {"event": "message_received", "data": {"message": message_json(message, message.delivery_status), "conversationId": cid}}
                ).decode()
                for device in targets:
                    device.deliver_message(cid, message.seq, str(message.id), text)

    async def track(self, connection: Connection, conversation_id: str) -> None:
        """The device opened a conversation the read model says its user belongs to. If the hub
        does not follow it yet (the membership frame from the relay is still on its way), follow
        it now, before the join is acknowledged: typing frames are never replayed, so one sent
        before the subscription lands would be lost. Messages are caught up from seq 0 as the
        membership frame would (a device skips what it already has)."""
        if conversation_id not in connection.seen_seq:
            await self._follow(conversation_id, connection.user_id, [connection], since_seq=0)

    async def on_reconnect(self) -> None:
        """Redis came back (or dropped messages): whatever was published meanwhile is lost."""
        await self.catch_up(list(self.members))

    # ---- publishing (presence is not in the log: nodes publish it themselves) --------------

    async def publish_presence(self, user_id: str, conversation_ids: list[str], data: dict[str, Any]) -> None:
        """`presence_update` for the other members of each conversation, on whichever node they
        are (a member of two of them gets it twice: presence is state, a repeat is harmless)."""
        frame = orjson.dumps({"event": "presence_update", "data": data}).decode()
        await asyncio.gather(
            *(
                self.broadcast.publish(
                    conversation_channel(cid),
                    orjson.dumps({"kind": "presence", "conversationId": cid, "userId": user_id, "frame": frame}).decode(),
                )
                for cid in conversation_ids
            )
        )

    # ---- subscriptions -------------------------------------------------------------------

    async def _subscribe(self, channel: str) -> None:
        if channel in self._listeners:
            return
        ready = asyncio.Event()
        self._listeners[channel] = asyncio.create_task(self._listen(channel, ready), name=f"sub-{channel}")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(ready.wait(), SUBSCRIBE_TIMEOUT_S)

    async def _unsubscribe(self, channel: str) -> None:
        task = self._listeners.pop(channel, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def close(self) -> None:
        for channel in list(self._listeners):
            await self._unsubscribe(channel)

    async def _listen(self, channel: str, ready: asyncio.Event) -> None:
        async with self.broadcast.subscribe(channel) as subscriber:
            ready.set()
            async for event in subscriber:  # type: ignore[union-attr]
                try:
                    await self._dispatch(channel, event.message)
                except Exception:  # one bad message never stops the channel
                    log.exception("could not dispatch a message on %s", channel)

    def _forget_member(self, cid: str, user: str) -> None:
        local = self.members.get(cid)
        if local is None:
            return
        local.discard(user)
        if not local:
            del self.members[cid]
            task = self._listeners.pop(conversation_channel(cid), None)
            if task is not None:
                task.cancel()

    # ---- dispatch ------------------------------------------------------------------------

    async def _dispatch(self, channel: str, message: str) -> None:
        envelope = orjson.loads(message)
        kind = envelope["kind"]
        if kind == "user":
            for device in self.devices(channel.removeprefix("user:")):
                device.send_text(envelope["frame"])
        elif kind == "membership":
            await self._membership(envelope)
        elif kind == "unread":  # members' new totals, one envelope for the conversation
            frames: dict[int, str] = {}  # totals repeat across members: one frame per value
            for user, total in envelope["counts"].items():
                devices = self.connections.get(user)
                if devices:
                    text = frames.get(total)
                    if text is None:
                        text = frames[total] = unread_frame(total)
                    for device in devices:
                        device.send_text(text)
        else:
            cid = envelope["conversationId"]
            devices = [device for user in self.members.get(cid, ()) for device in self.devices(user)]
            if kind == "message":
                seq = envelope["seq"]
                # A seq beyond a device's next one means frames were lost (a Redis outage,
                # a dropped subscription): fill the gap from the read model first, in order.
                gapped = [device for device in devices if seq > device.seen_seq.get(cid, seq - 1) + 1]
                if gapped:
                    await self.catch_up([cid], gapped)
                for device in devices:
                    device.deliver_message(cid, seq, envelope.get("messageId"), envelope["frame"])
            elif kind == "typing":
                for device in devices:
                    if cid in device.joined:
                        device.send_text(envelope["frame"])
            elif kind == "presence":
                for device in devices:
                    if device.user_id != envelope["userId"]:
                        device.send_text(envelope["frame"])
            else:  # edits, deletes, receipts
                for device in devices:
                    device.send_text(envelope["frame"])

    async def _follow(self, cid: str, user: str, devices: list[Connection], *, since_seq: int) -> None:
        """The user's devices here follow the conversation: subscribed, then caught up from
        `since_seq` (a device that already had a later seq keeps it)."""
        for device in devices:
            device.seen_seq.setdefault(cid, since_seq)
        self.members[cid].add(user)
        await self._subscribe(conversation_channel(cid))
        await self.catch_up([cid], devices)

    async def _membership(self, envelope: dict[str, Any]) -> None:
        cid, user = envelope["conversationId"], envelope["userId"]
        devices = list(self.devices(user))
        if not devices:
            return
        if envelope["isMember"]:
            await self._follow(cid, user, devices, since_seq=int(envelope.get("sinceSeq", 0)))
        else:
            for device in devices:
                device.seen_seq.pop(cid, None)
                device.joined.discard(cid)
                device.left_conversation(cid)
            self._forget_member(cid, user)
