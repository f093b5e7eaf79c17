"""Unread-count pushes are coalesced per user: at most one push per user per interval, with
the latest total (and the route of its latest change); a user not pushed within the interval
goes at once, and while commits wait a flush pushes only a part."""

from __future__ import annotations

import pytest

from projections.unread_pushes import PUBLISH_GAP_S, UnreadPushes


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Pushed(list):  # type: ignore[type-arg]
    """The publish callback: records each push's totals (and, in `routes`, their routes)."""

    def __init__(self) -> None:
        super().__init__()
        self.routes: list[dict[str, str]] = []

    def __call__(self, totals: dict[str, int], via: dict[str, str]) -> None:
        self.append(dict(totals))
        self.routes.append(dict(via))


@pytest.fixture
def clock() -> Clock:
    return Clock()


def alice_just_pushed(clock: Clock, *, gap_s: float = PUBLISH_GAP_S) -> tuple[Pushed, UnreadPushes]:
    """Pushes with a 0.25 s interval per user (binary fractions: exact sums) that have just
    pushed alice's first total."""
    pushed = Pushed()
    pushes = UnreadPushes(pushed, every_s=0.25, gap_s=gap_s, clock=clock)
    pushes.add({"alice": 1})
    pushes.flush()
    return pushed, pushes


def test_the_first_change_of_a_user_is_pushed_at_once(clock: Clock) -> None:
    pushed = Pushed()
    pushes = UnreadPushes(pushed, every_s=0.2, clock=clock)

    pushes.add({"alice": 1})

    assert pushes.flush() is None
    assert pushed == [{"alice": 1}]


def test_a_users_changes_within_their_interval_go_out_once_it_ends_with_the_latest_total(clock: Clock) -> None:
    pushed, pushes = alice_just_pushed(clock, gap_s=0.0)

    clock.now += 0.0625
    pushes.add({"alice": 2})
    clock.now += 0.0625
    pushes.add({"alice": 3})

    assert pushes.flush() == 0.125  # her interval ends 0.25 s after her push
    assert pushed == [{"alice": 1}]
    clock.now += 0.125
    assert pushes.flush() is None
    assert pushed == [{"alice": 1}, {"alice": 3}]


def test_each_user_has_an_interval_of_their_own(clock: Clock) -> None:
    pushed, pushes = alice_just_pushed(clock)

    clock.now += 0.0625
    pushes.add({"alice": 2, "bob": 1})  # bob had no push yet: he goes now, alice waits

    assert pushes.flush() == 0.1875
    assert pushed == [{"alice": 1}, {"bob": 1}]
    clock.now += 0.1875
    pushes.add({"bob": 2})  # bob's interval runs 0.0625 s longer than alice's
    assert pushes.flush() == 0.0625
    assert pushed == [{"alice": 1}, {"bob": 1}, {"alice": 2}]
    clock.now += 0.0625
    assert pushes.flush() is None
    assert pushed[-1] == {"bob": 2}


def test_while_commits_wait_a_flush_pushes_only_a_part_and_the_rest_at_the_next(clock: Clock) -> None:
    pushed = Pushed()
    pushes = UnreadPushes(pushed, every_s=0.25, gap_s=0.0625, max_while_busy=2, clock=clock)
    pushes.add({"alice": 1, "bob": 1, "carol": 1, "dave": 1, "erin": 1})

    assert pushes.flush(busy=True) == 0.0625  # more are ready: the next part after the gap
    clock.now += 0.0625
    assert pushes.flush(busy=True) == 0.0625
    clock.now += 0.0625
    assert pushes.flush(busy=True) is None
    assert pushed == [{"alice": 1, "bob": 1}, {"carol": 1, "dave": 1}, {"erin": 1}]


def test_a_flush_with_no_commits_waiting_pushes_everything_ready(clock: Clock) -> None:
    pushed = Pushed()
    pushes = UnreadPushes(pushed, every_s=0.25, gap_s=0.0625, max_while_busy=2, clock=clock)
    pushes.add({"alice": 1, "bob": 1, "carol": 1})

    pushes.flush(busy=True)
    clock.now += 0.0625
    assert pushes.flush() is None
    assert pushed == [{"alice": 1, "bob": 1}, {"carol": 1}]


def test_publishes_are_at_least_the_gap_apart_and_one_carries_every_user_ready_by_then(clock: Clock) -> None:
    pushed, pushes = alice_just_pushed(clock, gap_s=0.0625)

    clock.now += 0.015625
    pushes.add({"bob": 1})  # bob may have a push, but the last publish was just now
    assert pushes.flush() == 0.046875
    clock.now += 0.015625
    pushes.add({"carol": 1})
    assert pushes.flush() == 0.03125
    assert pushed == [{"alice": 1}]
    clock.now += 0.03125
    assert pushes.flush() is None
    assert pushed == [{"alice": 1}, {"bob": 1, "carol": 1}]


def test_a_change_queued_for_the_end_of_an_interval_goes_with_its_latest_total_after_it(clock: Clock) -> None:
    pushed, pushes = alice_just_pushed(clock)
    clock.now += 0.0625
    pushes.add({"alice": 2})

    clock.now += 0.25  # her interval has ended, but no flush has run since
    pushes.add({"alice": 3})

    assert pushes.flush() is None
    assert pushed == [{"alice": 1}, {"alice": 3}]


def test_nothing_pending_means_nothing_is_due(clock: Clock) -> None:
    pushes = UnreadPushes(lambda totals, via: None, clock=clock)

    assert pushes.flush() is None


def test_a_failed_publish_keeps_the_totals_for_the_next_try(clock: Clock) -> None:
    attempts: list[dict[str, int]] = []

    def publish(totals: dict[str, int], via: dict[str, str]) -> None:
        attempts.append(dict(totals))
        if len(attempts) == 1:
            raise ConnectionError("redis is down")

    pushes = UnreadPushes(publish, clock=clock)
    pushes.add({"alice": 1})
    with pytest.raises(ConnectionError):
        pushes.flush()

    assert pushes.flush() is None
    assert attempts == [{"alice": 1}, {"alice": 1}]


def test_discarded_totals_are_never_pushed(clock: Clock) -> None:
    pushed = Pushed()
    pushes = UnreadPushes(pushed, clock=clock)
    pushes.add({"alice": 1})

    pushes.discard()

    assert pushes.flush() is None and pushed == []


def test_each_total_goes_by_the_route_of_its_latest_change(clock: Clock) -> None:
    pushed = Pushed()
    pushes = UnreadPushes(pushed, every_s=0.25, clock=clock)
    pushes.add({"alice": 1}, {"alice": "group"})
    pushes.flush()

    clock.now += 0.0625
    pushes.add({"alice": 2, "bob": 1, "carol": 4}, {"alice": "group", "bob": "group", "carol": "shop"})
    pushes.add({"alice": 3})  # alice read: her own channel, as the read's total says
    pushes.add({"bob": 0})  # so did bob
    pushes.flush()
    clock.now += 0.25
    pushes.flush()

    assert pushed == [{"alice": 1}, {"bob": 0, "carol": 4}, {"alice": 3}]
    assert pushed.routes == [{"alice": "group"}, {"carol": "shop"}, {}]
