"""The bench's arithmetic: nearest-rank percentiles and summaries, the plan of who talks to
whom, the message ids that carry a send's due time, and how a device's deliveries are judged."""

from __future__ import annotations

import gc
from array import array

import pytest

from scripts.bench.ledger import Device, Step, client_message_id, due_deliveries, parse_client_message_id, record_delivery
from scripts.bench.plan import plan_chat, plan_group, plan_typing
from scripts.bench.scenarios import search_max
from scripts.bench.stats import percentile, samples_from_bytes, summarize


class TestPercentile:
    def test_the_median_of_an_even_count_is_the_lower_middle_sample(self) -> None:
        assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0

    def test_p99_of_a_hundred_samples_is_the_99th(self) -> None:
        values = [float(v) for v in range(1, 101)]
        assert percentile(values, 99) == 99.0
        assert percentile(values, 95) == 95.0

    def test_p100_is_the_maximum(self) -> None:
        assert percentile([0.5, 7.0, 9.0], 100) == 9.0

    def test_a_single_sample_is_every_percentile(self) -> None:
        assert {percentile([4.2], q) for q in (1, 50, 99, 100)} == {4.2}

    def test_a_high_percentile_of_few_samples_is_the_largest_not_an_interpolation(self) -> None:
        assert percentile([10.0, 20.0, 30.0], 99) == 30.0
        assert percentile([10.0, 20.0, 30.0], 34) == 20.0

    def test_no_samples_has_no_percentile(self) -> None:
        assert percentile([], 50) is None

    @pytest.mark.parametrize("q", [0, -1, 100.5])
    def test_q_outside_the_open_closed_range_is_refused(self, q: float) -> None:
        with pytest.raises(ValueError):
            percentile([1.0], q)


class TestSummarize:
    def test_unsorted_input_is_summarized_by_rank(self) -> None:
        values = [float(v) for v in range(100, 0, -1)]
        assert summarize(values) == {"p50": 50.0, "p95": 95.0, "p99": 99.0, "max": 100.0}

    def test_only_the_requested_keys_are_reported(self) -> None:
        assert summarize([3.0, 1.0, 2.0], ("p50", "p99")) == {"p50": 2.0, "p99": 3.0}

    def test_no_samples_give_nulls_not_zeros(self) -> None:
        assert summarize([]) == {"p50": None, "p95": None, "p99": None, "max": None}

    def test_values_are_rounded_to_microseconds(self) -> None:
        assert summarize([1.23456789], ("max",)) == {"max": 1.235}

    def test_worker_buffers_are_pooled_before_ranking(self) -> None:
        first, second = array("d", [1.0, 2.0]), array("d", [3.0, 4.0])
        assert summarize(samples_from_bytes([first.tobytes(), second.tobytes()]), ("p50", "max")) == {"p50": 2.0, "max": 4.0}


class TestClientMessageId:
    def test_the_step_and_due_time_round_trip(self) -> None:
        assert parse_client_message_id(client_message_id(3, 123_456_789_012, 1, 42)) == (3, 123_456_789_012)

    @pytest.mark.parametrize("value", [None, "", "m-1", "a.b.c.d", 7])
    def test_ids_the_bench_did_not_write_are_not_read_as_its_own(self, value: object) -> None:
        assert parse_client_message_id(value) is None


class TestPlan:
    def test_chat_pairs_every_user_exactly_once_by_default(self) -> None:
        plan = plan_chat("r", users=10, conversations=None, workers=2, nodes=1)
        members = [user for conversation in plan.conversations for user in conversation.members]
        assert sorted(members) == list(range(10))

    def test_more_chats_than_pairs_never_repeat_a_pair(self) -> None:
        plan = plan_chat("r", users=6, conversations=15, workers=2, nodes=1)
        pairs = {frozenset(conversation.members) for conversation in plan.conversations}
        assert len(pairs) == 15 and all(len(pair) == 2 for pair in pairs)

    def test_every_member_of_every_conversation_sends_from_exactly_one_worker(self) -> None:
        plan = plan_group("r", users=None, conversations=2, group_size=5, workers=3, nodes=2)
        slots = [slot for worker in range(3) for slot in plan.sender_slots(worker)]
        assert sorted(slots) == sorted((c.key, m) for c in plan.conversations for m in c.members)

    def test_with_two_nodes_a_chat_pair_spans_both(self) -> None:
        plan = plan_chat("r", users=8, conversations=None, workers=2, nodes=2)
        assert all(len({plan.node_of(user) for user in c.members}) == 2 for c in plan.conversations)

    def test_a_group_larger_than_the_users_is_refused(self) -> None:
        with pytest.raises(ValueError):
            plan_group("r", users=3, conversations=1, group_size=5, workers=1, nodes=1)

    def test_typists_only_type_and_chatters_only_send(self) -> None:
        plan = plan_typing("r", users=6, conversations=None, typists=4, workers=2, nodes=1)
        senders = {user for worker in range(2) for _, user in plan.sender_slots(worker)}
        typists = {user for worker in range(2) for _, user in plan.typing_slots(worker)}
        assert senders == set(range(6)) and typists == {6, 7, 8, 9}
        assert plan.users == 10 and plan.total_slots() == 6

    def test_typists_come_in_pairs(self) -> None:
        with pytest.raises(ValueError):
            plan_typing("r", users=6, conversations=None, typists=3, workers=1, nodes=1)


def delivery(message_id: str, seq: int, step: int = 0, conversation: str = "c1") -> dict[str, object]:
    message = {"id": message_id, "seq": seq, "clientMessageId": client_message_id(step, 1_000_000, 0, seq)}
    return {"message": message, "conversationId": conversation}


class TestDeliveryLedger:
    def test_increasing_seqs_are_counted_once_each_with_their_latency(self) -> None:
        step, device = Step(0), Device("bob", None, frozenset({"c1"}))
        counted = [record_delivery(step, device, delivery(f"m{seq}", seq), 3_000_000) for seq in (1, 2, 4)]

        assert counted == [True, True, True]
        assert (step.duplicates, step.out_of_order) == (0, 0)
        assert list(step.e2e_ms) == [2.0, 2.0, 2.0]  # due at 1 ms, received at 3 ms

    def test_the_same_id_again_is_a_duplicate_not_a_second_delivery(self) -> None:
        step, device = Step(0), Device("bob", None, frozenset({"c1"}))
        record_delivery(step, device, delivery("m1", 1), 0)

        assert record_delivery(step, device, delivery("m1", 1), 0) is False
        assert (step.duplicates, step.out_of_order) == (1, 0)

    def test_a_duplicate_of_the_previous_step_is_still_a_duplicate(self) -> None:
        step, device = Step(0), Device("bob", None, frozenset({"c1"}))
        record_delivery(step, device, delivery("m1", 1), 0)
        device.new_step()

        next_step = Step(1)

        assert record_delivery(next_step, device, delivery("m1", 1), 0) is False
        assert next_step.duplicates == 1

    def test_a_message_two_devices_receive_keeps_its_first_and_last_receipt(self) -> None:
        step = Step(0)
        bob, carol = Device("bob", None, frozenset({"c1"})), Device("carol", None, frozenset({"c1"}))
        record_delivery(step, bob, delivery("m1", 1), 5_000_000)
        record_delivery(step, carol, delivery("m1", 1), 7_000_000)

        assert step.receipts == {"m1": (5_000_000, 7_000_000)}

    def test_receipts_drop_out_of_the_garbage_collectors_sight(self) -> None:
        """A long step holds one receipt per message: none of them may lengthen a full collection."""
        step, device = Step(0), Device("bob", None, frozenset({"c1"}))
        record_delivery(step, device, delivery("m1", 1), 0)
        gc.collect()

        assert not gc.is_tracked(step.receipts["m1"])
        assert not gc.is_tracked(step.receipts) and not gc.is_tracked(device.received)

    def test_a_new_message_below_the_highest_seq_is_out_of_order(self) -> None:
        step, device = Step(0), Device("bob", None, frozenset({"c1", "c2"}))
        record_delivery(step, device, delivery("m3", 3), 0)
        record_delivery(step, device, delivery("x1", 1, conversation="c2"), 0)  # another conversation: fine

        record_delivery(step, device, delivery("m2", 2), 0)
        assert (step.duplicates, step.out_of_order) == (0, 1)

    def test_an_earlier_steps_message_is_late_and_has_no_latency_sample(self) -> None:
        step, device = Step(2), Device("bob", None, frozenset({"c1"}))

        assert record_delivery(step, device, delivery("m1", 1, step=1), 0) is False
        assert step.late == 1 and len(step.e2e_ms) == 0

    def test_a_device_is_due_every_message_of_its_conversations_except_its_own(self) -> None:
        alice, bob = Device("alice", None, frozenset({"c1"})), Device("bob", None, frozenset({"c1", "c2"}))
        expected = [("m1", "c1", "alice"), ("m2", "c1", "bob"), ("m3", "c2", "carol"), ("m4", "c9", "dave")]

        due = {(device.user, message_id) for device, message_id in due_deliveries([alice, bob], expected)}
        assert due == {("alice", "m2"), ("bob", "m1"), ("bob", "m3")}


class ScriptedTraffic:
    """Steps whose outcome the test decides: rate -> successive within_target answers."""

    def __init__(self, outcomes: dict[float, list[bool]], lossless: bool = True) -> None:
        self.outcomes = {rate: list(answers) for rate, answers in outcomes.items()}
        self.lossless = lossless
        self.rates: list[float] = []

    def step(self, number: int, offered: float) -> dict[str, object]:
        self.rates.append(offered)
        ok = self.outcomes[offered].pop(0)
        lost = 0 if self.lossless else 1
        return {"offered_rate": offered, "within_target": ok, "lost": lost, "duplicates": 0, "out_of_order": 0}


class TestMaxSearch:
    def test_a_rate_that_misses_once_is_tried_again_and_the_search_goes_on(self) -> None:
        traffic = ScriptedTraffic({100: [True], 200: [False, True], 300: [False, False], 250: [False, False]})
        steps = search_max(traffic, 100, 100, 1000)  # type: ignore[arg-type]
        assert traffic.rates == [100, 200, 200, 300, 300, 250, 250]
        assert max(s["offered_rate"] for s in steps if s["within_target"]) == 200

    def test_after_the_first_miss_the_rate_halfway_back_is_tried(self) -> None:
        traffic = ScriptedTraffic({100: [True], 200: [True], 300: [False, False], 250: [True]})
        steps = search_max(traffic, 100, 100, 1000)  # type: ignore[arg-type]
        assert traffic.rates == [100, 200, 300, 300, 250]
        assert max(s["offered_rate"] for s in steps if s["within_target"]) == 250

    def test_the_search_stops_at_the_ceiling(self) -> None:
        traffic = ScriptedTraffic({100: [True], 200: [True]})
        search_max(traffic, 100, 100, 200)  # type: ignore[arg-type]
        assert traffic.rates == [100, 200]

    def test_a_lost_message_stops_the_search_without_a_second_try(self) -> None:
        traffic = ScriptedTraffic({100: [False]}, lossless=False)
        search_max(traffic, 100, 100, 1000)  # type: ignore[arg-type]
        assert traffic.rates == [100]

    def test_a_first_rate_that_misses_twice_is_halved(self) -> None:
        traffic = ScriptedTraffic({400: [False, False], 200: [True]})
        search_max(traffic, 400, 100, 1000)  # type: ignore[arg-type]
        assert traffic.rates == [400, 400, 200]
