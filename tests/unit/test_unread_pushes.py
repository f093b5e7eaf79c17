"""Unread-count pushes are coalesced per interval, latest total per user (with the route of
its latest change), first one at once unless commits are waiting to be projected."""

from __future__ import annotations

import pytest

from projections.unread_pushes import UnreadPushes


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


def test_the_first_change_after_a_quiet_interval_is_pushed_at_once(clock: Clock) -> None:
    pushed = Pushed()
    pushes = UnreadPushes(pushed, every_s=0.2, clock=clock)

    pushes.add({"alice": 1})

    assert pushes.flush() is None
    assert pushed == [{"alice": 1}]


def test_changes_within_the_interval_go_out_together_with_each_users_latest_total(clock: Clock) -> None:
    pushed = Pushed()
    pushes = UnreadPushes(pushed, every_s=0.25, clock=clock)  # binary fractions: exact sums
    pushes.add({"alice": 1})
    pushes.flush()

    clock.now += 0.0625
    pushes.add({"alice": 2, "bob": 1})
    clock.now += 0.0625
    pushes.add({"alice": 3})

    assert pushes.flush() == 0.125
    assert pushed == [{"alice": 1}]
    clock.now += 0.125
    assert pushes.flush() is None
    assert pushed == [{"alice": 1}, {"alice": 3, "bob": 1}]


def test_a_due_push_waits_for_waiting_commits_and_then_carries_their_totals(clock: Clock) -> None:
    pushed = Pushed()
    pushes = UnreadPushes(pushed, every_s=0.25, max_hold_s=0.125, clock=clock)
    pushes.add({"alice": 1})

    assert pushes.flush(hold=True) == 0.0  # due, held: the next commit's frames go first
    assert pushed == []
    clock.now += 0.0625
    pushes.add({"alice": 2, "bob": 1})  # that commit's totals
    assert pushes.flush() is None
    assert pushed == [{"alice": 2, "bob": 1}]


def test_a_push_is_held_for_waiting_commits_only_so_long(clock: Clock) -> None:
    pushed = Pushed()
    pushes = UnreadPushes(pushed, every_s=0.25, max_hold_s=0.125, clock=clock)
    pushes.add({"alice": 1})
    pushes.flush(hold=True)

    clock.now += 0.0625
    pushes.add({"alice": 2})
    assert pushes.flush(hold=True) == 0.0
    clock.now += 0.0625
    assert pushes.flush(hold=True) is None  # held 0.125 s: out, though commits still wait
    assert pushed == [{"alice": 2}]

    pushes.add({"alice": 3})
    clock.now += 0.25
    assert pushes.flush(hold=True) == 0.0  # the next push is held afresh
    assert pushed == [{"alice": 2}]


def test_a_push_within_its_interval_is_not_due_whether_or_not_commits_wait(clock: Clock) -> None:
    pushed = Pushed()
    pushes = UnreadPushes(pushed, every_s=0.25, clock=clock)
    pushes.add({"alice": 1})
    pushes.flush()

    pushes.add({"alice": 2})

    assert pushes.flush(hold=True) == 0.25
    assert pushed == [{"alice": 1}]


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
    pushes.add({"bob": 0})  # bob read: his own channel, as the read's total says
    clock.now += 0.25
    pushes.flush()

    assert pushed == [{"alice": 1}, {"alice": 2, "bob": 0, "carol": 4}]
    assert pushed.routes == [{"alice": "group"}, {"alice": "group", "carol": "shop"}]
