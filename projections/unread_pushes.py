"""Unread-count pushes, coalesced: at most one round of pushes every `PUSH_EVERY_S`.

A message to a 1,000-member group changes 1,000 unread totals. Pushing each one as it changes
doubles the frames a group message costs (the message frame, then an `unread_count` frame per
member), on the relay, in Redis and on every node. Totals are absolute, so only a user's latest
one matters: the changes of a burst become one push per user with the latest total. After a
quiet interval the first change goes out at once, so a lone message's count is not delayed.

Each total may name a conversation to go `via`: one the user is a member of, whose channel
their node follows. The relay then sends a group's counts as one envelope on that channel
instead of one per member (see Relay.publish_unread).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

PUSH_EVERY_S = 0.2  # a badge a fifth of a second late is invisible; the saving is per member


class UnreadPushes:
    def __init__(
        self,
        publish: Callable[[dict[str, int], dict[str, str]], None],
        *,
        every_s: float = PUSH_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._publish = publish
        self._every_s = every_s
        self._clock = clock
        self._pending: dict[str, int] = {}
        self._via: dict[str, str] = {}  # user -> conversation channel; absent: the user's own
        self._next_at = 0.0

    def add(self, totals: dict[str, int], via: Mapping[str, str] | None = None) -> None:
        """Queue each user's latest total, with the route of that latest change."""
        via = via or {}
        self._pending.update(totals)
        for user in totals:
            route = via.get(user)
            if route is None:
                self._via.pop(user, None)
            else:
                self._via[user] = route

    def discard(self) -> None:
        """Forget what is pending (the relay is behind: clients catch up with `sync`)."""
        self._pending.clear()
        self._via.clear()

    def flush(self) -> float | None:
        """Push what is pending if a push is allowed now. Returns the seconds until pending
        totals may go out, or None when nothing is pending. A failed publish raises and keeps
        the totals pending."""
        if not self._pending:
            return None
        now = self._clock()
        if now < self._next_at:
            return self._next_at - now
        self._publish(self._pending, self._via)
        self._pending, self._via = {}, {}
        self._next_at = now + self._every_s
        return None
