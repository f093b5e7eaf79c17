"""Unread-count pushes, coalesced: at most one round of pushes every `PUSH_EVERY_S`.

A message to a 1,000-member group changes 1,000 unread totals. Pushing each one as it changes
doubles the frames a group message costs (the message frame, then an `unread_count` frame per
member), on the relay, in Redis and on every node. Totals are absolute, so only a user's latest
one matters: the changes of a burst become one push per user with the latest total. After a
quiet interval the first change goes out at once, so a lone message's count is not delayed.

A push also waits for commits that are already waiting to be projected (`flush(hold=True)`):
their messages' frames go out first, and the push then carries the totals they changed too. A
group message's push is a frame per member; sent between two messages to the same group, it
put 1,000 writes on the api node ahead of the second message's frames (docs/performance.md,
the tenth session). A push is held at most `MAX_HOLD_S`, so a steady stream of commits never
starves the badges.

Each total may name a conversation to go `via`: one the user is a member of, whose channel
their node follows. The relay then sends a group's counts as one envelope on that channel
instead of one per member (see Relay.publish_unread).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

PUSH_EVERY_S = 0.2  # a badge a fifth of a second late is invisible; the saving is per member
MAX_HOLD_S = 0.1  # how long a due push may wait for waiting commits' frames (see `flush`)


class UnreadPushes:
    def __init__(
        self,
        publish: Callable[[dict[str, int], dict[str, str]], None],
        *,
        every_s: float = PUSH_EVERY_S,
        max_hold_s: float = MAX_HOLD_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._publish = publish
        self._every_s = every_s
        self._max_hold_s = max_hold_s
        self._clock = clock
        # user -> (latest total, the conversation it goes through; None: the user's own channel)
        self._pending: dict[str, tuple[int, str | None]] = {}
        self._next_at = 0.0
        self._held_since: float | None = None  # when a due push was first held (`flush`)

    def add(self, totals: dict[str, int], via: Mapping[str, str] | None = None) -> None:
        """Queue each user's latest total, with the route of that latest change."""
        via = via or {}
        for user, total in totals.items():
            self._pending[user] = (total, via.get(user))

    def discard(self) -> None:
        """Forget what is pending (the relay is behind: clients catch up with `sync`)."""
        self._pending.clear()
        self._held_since = None

    def flush(self, *, hold: bool = False) -> float | None:
        """Push what is pending if a push is allowed now. Returns the seconds until pending
        totals may go out, or None when nothing is pending. A failed publish raises and keeps
        the totals pending.

        `hold`: commits are waiting to be projected. A due push then waits for them (0.0:
        due, held), unless it has been held for `max_hold_s` already."""
        if not self._pending:
            return None
        now = self._clock()
        if now < self._next_at:
            return self._next_at - now
        if hold:
            if self._held_since is None:
                self._held_since = now
            if now - self._held_since < self._max_hold_s:
                return 0.0
        pending = self._pending
        totals = {user: total for user, (total, _) in pending.items()}
        self._publish(totals, {user: cid for user, (_, cid) in pending.items() if cid is not None})
        self._pending = {}
        self._next_at = now + self._every_s
        self._held_since = None
        return None
