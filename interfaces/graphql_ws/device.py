"""A graphql-ws socket as the node's hub sees it: one device of its user, like a /ws socket.

The hub delivers every frame for the user to `send_text` (messages through `deliver_message`,
which drops what this socket already had, by seq). Instead of writing frames to the socket,
the device parses each one once and hands its `data` to the feeds (one per active
subscription) that follow that event name. A feed that overflows (feeds.py) closes the socket
with `SLOW_CONSUMER_CODE`, as /ws does: the client resumes with `messageAdded(afterSeq:)`.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable

import orjson
from starlette.websockets import WebSocket

from interfaces.graphql_ws.feeds import TYPING_EVENT, Feed
from interfaces.ws.connection import SLOW_CONSUMER_CODE, Connection

log = logging.getLogger(__name__)

SLOW_CONSUMER_REASON = "too far behind: reconnect and resubscribe (messageAdded with afterSeq)"


class SubscriberDevice(Connection):
    def __init__(self, websocket: WebSocket, user_id: str, on_overflow: Callable[[int, str], None]) -> None:
        super().__init__(websocket, user_id)
        self._feeds: dict[str, list[Feed]] = defaultdict(list)
        self._on_overflow = on_overflow

    def start(self) -> None:
        """Nothing to start: frames go to feeds, and the session writes the socket."""

    def add_feed(self, feed: Feed) -> None:
        self._feeds[feed.event].append(feed)
        if feed.event == TYPING_EVENT and feed.conversation_id is not None:
            self.joined.add(feed.conversation_id)

    def remove_feed(self, feed: Feed) -> None:
        feeds = self._feeds.get(feed.event)
        if feeds is None or feed not in feeds:
            return
        feeds.remove(feed)
        if not feeds:
            del self._feeds[feed.event]
        if feed.event == TYPING_EVENT:
            self.joined = {other.conversation_id for other in feeds if other.conversation_id is not None}

    def send_text(self, text: str) -> None:
        """A frame from the hub: parsed once, then offered to every feed of its event."""
        if self.closed or not self._feeds:
            return  # nobody listens: not even worth parsing
        try:
            frame = orjson.loads(text)
            feeds = self._feeds.get(frame["event"])
            data = frame.get("data") or {}
        except Exception:  # one odd frame never stops the socket
            log.warning("graphql-ws device %s ignored a frame it could not read", self.id)
            return
        for feed in list(feeds or ()):
            if not feed.offer(data):
                log.info("closing graphql-ws socket %s (%s): subscriber too far behind", self.id, self.user_id)
                self.closed = True
                self._on_overflow(SLOW_CONSUMER_CODE, SLOW_CONSUMER_REASON)
                return
