"""A server process's garbage-collector settings: start-up objects frozen, a larger young
generation, and cycles still collected."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from infrastructure.garbage_collection import YOUNG_THRESHOLD, tune_for_server


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture
def tuned() -> Iterator[None]:
    before = gc.get_threshold()
    tune_for_server()
    try:
        yield
    finally:  # the test process's own collector as it was
        gc.unfreeze()
        gc.set_threshold(*before)


def test_what_start_up_built_is_frozen_and_the_young_generation_is_ten_times_larger(tuned: None) -> None:
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold()[0] == YOUNG_THRESHOLD == 10 * 700


def test_a_cycle_made_after_tuning_is_still_collected(tuned: None) -> None:
    first, second = Node(), Node()
    first.other, second.other = second, first
    del first, second

    assert gc.collect() >= 2


def test_only_the_young_threshold_changes(tuned: None) -> None:
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    tune_for_server()

    assert gc.get_threshold() == (YOUNG_THRESHOLD, 10, 10)
