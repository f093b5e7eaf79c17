"""Unread-count pushes, coalesced per user: at most one push to a user every `PUSH_EVERY_S`.

A message to a 1,000-member group changes 1,000 unread totals. Pushing each one as it changes
doubles the frames a group message costs (the message frame, then an `unread_count` frame per
member), on the relay, in Redis and on every node. Totals are absolute, so only a user's latest
one matters: the changes a user gets within `PUSH_EVERY_S` of their last push become one push
with the latest total. A user whose last push is older goes out with the next publish, at once
after a quiet spell, so a lone message's count is not delayed.

Each user has an interval of their own, not one round for everybody: under steady chat load the
pushes then go out a few at a time, at most every `PUBLISH_GAP_S` (a publish is a Redis round
trip, and one per batch cost 27% more server CPU per message at 500 msg/s, alternated). Rounds
for everybody sent hundreds of frames in one go (at 2,500 msg/s, 500 every 0.2 s), and on a
nearly full machine that burst set every other message back: send→receive p99 117–220 ms,
against 26–51 ms without the pushes (docs/performance.md, the eleventh session).

While commits are waiting to be projected (`flush(busy=True)`) a flush pushes at most
`MAX_TOTALS_WHILE_BUSY` totals and leaves the rest for the next flushes, between the next
batches: a group message's push is a frame per member, and 1,000 of them ahead of the next
message's frames delayed it by about 45 ms (the tenth session). The rest follows a part every
`PUBLISH_GAP_S`, so a steady stream of commits never starves the badges.

Each total may name a conversation to go `via`: one the user is a member of, whose channel
their node follows. The relay then sends a group's counts as one envelope on that channel
instead of one per member (see Relay.publish_unread).
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable, Mapping

PUSH_EVERY_S = 0.2  # a badge a fifth of a second late is invisible; the saving is per member
PUBLISH_GAP_S = 0.02  # between two publishes: a Redis round trip each, not one per batch
MAX_TOTALS_WHILE_BUSY = 100  # a tenth of the 1,000 whose writes took ~45 ms (the module doc)

# (latest total, the conversation it goes through; None: the user's own channel)
Route = tuple[int, str | None]


class UnreadPushes:
    def __init__(
        self,
        publish: Callable[[dict[str, int], dict[str, str]], None],
        *,
        every_s: float = PUSH_EVERY_S,
        gap_s: float = PUBLISH_GAP_S,
        max_while_busy: int = MAX_TOTALS_WHILE_BUSY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._publish = publish
        self._every_s = every_s
        self._gap_s = gap_s
        self._next_publish_at = 0.0
        self._max_while_busy = max_while_busy
        self._clock = clock
        self._ready: dict[str, Route] = {}  # may go now, in the order they changed
        self._waiting: dict[str, Route] = {}  # changed within their interval
        self._waiting_until: list[tuple[float, str]] = []  # heap: when each waiting user may go
        # user -> when their interval ends. Pushes happen in time order and every interval is
        # as long, so this dict's order is the order the intervals end (`_forget_ended`).
        self._interval_ends: dict[str, float] = {}

    def add(self, totals: dict[str, int], via: Mapping[str, str] | None = None) -> None:
        """Queue each user's latest total, with the route of that latest change."""
        via = via or {}
        now = self._clock()
        for user, total in totals.items():
            route = (total, via.get(user))
            if user in self._waiting:  # queued for the end of its interval: the latest goes then
                self._waiting[user] = route
                continue
            ends = self._interval_ends.get(user)
            if ends is None or ends <= now:
                self._ready[user] = route
                continue
            heapq.heappush(self._waiting_until, (ends, user))
            self._waiting[user] = route

    def discard(self) -> None:
        """Forget what is pending (the relay is behind: clients catch up with `sync`)."""
        self._ready.clear()
        self._waiting.clear()
        self._waiting_until.clear()

    def flush(self, *, busy: bool = False) -> float | None:
        """Push the totals whose users may have one now, unless the last publish was less than
        `gap_s` ago. Returns the seconds until more may go, or None when nothing is pending.
        A failed publish raises and keeps the totals pending.

        `busy`: commits are waiting to be projected. Push at most `max_while_busy` totals, so
        that their frames are not queued behind a large push."""
        now = self._clock()
        self._forget_ended(now)
        while self._waiting_until and self._waiting_until[0][0] <= now:
            _, user = heapq.heappop(self._waiting_until)
            self._ready[user] = self._waiting.pop(user)
        if self._ready:
            if now < self._next_publish_at:
                return self._next_publish_at - now
            self._publish_part(now, self._max_while_busy if busy else len(self._ready))
            if self._ready:
                return self._gap_s
        if not self._waiting_until:
            return None
        return max(self._waiting_until[0][0], self._next_publish_at) - now

    def _publish_part(self, now: float, most: int) -> None:
        """Publish the first `most` ready totals (in the order they changed); their users' next
        intervals start now."""
        users = list(itertools.islice(self._ready, most))
        routes = [self._ready[user] for user in users]
        self._publish(
            {user: total for user, (total, _) in zip(users, routes)},
            {user: cid for user, (_, cid) in zip(users, routes) if cid is not None},
        )
        self._next_publish_at = now + self._gap_s
        ends = now + self._every_s
        for user in users:
            del self._ready[user]
            self._interval_ends.pop(user, None)  # re-inserted last: the dict stays in end order
            self._interval_ends[user] = ends

    def _forget_ended(self, now: float) -> None:
        """Drop the intervals that have ended (the oldest first), so the dict holds only the
        users pushed within the last `every_s`."""
        ends = self._interval_ends
        while ends:
            user = next(iter(ends))
            if ends[user] > now:
                return
            del ends[user]
