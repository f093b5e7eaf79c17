"""The write side on a real Postgres: commands through the group-commit writer, checked against
what the log holds when a new application (or a new node) reads it back.

Covers the round trip of every kind of event, durable idempotency (also across a restart),
all-or-nothing per command inside a shared batch, concurrent senders on one node and on two
nodes, log positions, and bounded cold loads through snapshots.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4

import pytest

from application.commands import (
    AddParticipant,
    Command,
    DeleteMessage,
    EditMessage,
    MarkDelivered,
    MarkRead,
    SendMessage,
    SetTyping,
    StartConversation,
)
from application.errors import ConcurrencyConflictError, WriterStoppedError
from application.group_commit import MAX_LOOP_BATCH_COMMANDS
from application.messaging import SNAPSHOT_INTERVAL, MessagingApplication
from application.results import CommandResult
from domain.conversation import Conversation
from domain.errors import (
    ConversationNotFoundError,
    InvalidContentError,
    InvalidMessageTypeError,
    MessageDeletedError,
    NotMessageSenderError,
    NotParticipantError,
    UnknownParentMessageError,
    UnsupportedOperationError,
)
from domain.values import ConversationType, conversation_id_for, message_id_for
from infrastructure.postgres_url import PostgresParams
from tests.integration.conftest import connect
if TYPE_CHECKING:  # fixtures hand these in; never import a conftest at run time
    from tests.integration.conftest import Node

ALICE, BOB, CAROL, DAVE, MALLORY = "alice", "bob", "carol", "dave", "mallory"
RESULT_TIMEOUT_S = 30  # far above any batch here; only a hung writer reaches it

HoldBatch = Callable[["Node"], AbstractContextManager[None]]


@pytest.fixture(params=["thread", "loop"])
def writer_mode(request: pytest.FixtureRequest) -> str:
    """Every test here runs against a writer on its own thread and one on an event loop."""
    return str(request.param)


# ---- helpers ------------------------------------------------------------------------------


def direct_id(*users: str) -> UUID:
    return conversation_id_for(ConversationType.DIRECT, frozenset(users), None)


def logged_events(app: MessagingApplication, conversation_id: UUID) -> list[Any]:
    return list(app.events.get(conversation_id))


def logged_messages(app: MessagingApplication, conversation_id: UUID) -> list[Conversation.MessageSent]:
    return [e for e in logged_events(app, conversation_id) if isinstance(e, Conversation.MessageSent)]


def run_concurrently(scripts: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """Run each script on its own thread, all at once; return each script's result."""
    with ThreadPoolExecutor(max_workers=len(scripts)) as pool:
        futures = {name: pool.submit(script) for name, script in scripts.items()}
        return {name: future.result() for name, future in futures.items()}


def settle(futures: list[Future[Any]]) -> None:
    """Wait until every future is done (succeeded or failed), so the batch's stats are final."""
    for future in futures:
        future.exception(RESULT_TIMEOUT_S)


def is_increasing(values: list[int]) -> bool:
    return all(a < b for a, b in zip(values, values[1:]))


def state_of(conversation: Conversation) -> dict[str, Any]:
    return {k: v for k, v in vars(conversation).items() if k != "_pending_events"}


@dataclass(frozen=True)
class Trip:
    conversation_id: UUID
    question_id: UUID
    reply_id: UUID


def plan_a_trip(node: Node) -> Trip:
    """A group chat that goes through every kind of message and receipt event."""
    # Alice starts a group with Bob and Carol.
    conversation = node.execute(StartConversation(ALICE, "GROUP", (BOB, CAROL), title="Trip")).value
    # Bob asks a question; Alice replies to it, edits her reply, then deletes it.
    question = node.execute(SendMessage(BOB, conversation.id, "who is driving?", client_message_id="c-1")).value
    reply = node.execute(SendMessage(ALICE, conversation.id, "me", parent_message_id=question.id)).value
    node.execute(EditMessage(ALICE, reply.id, "me, at 9"))
    node.execute(DeleteMessage(ALICE, reply.id))
    # Carol's phone receives both messages; she reads the first one and starts typing.
    node.execute(MarkDelivered(CAROL, conversation.id, 2))
    node.execute(MarkRead(CAROL, conversation.id, 1))
    node.execute(SetTyping(CAROL, conversation.id, True))
    return Trip(conversation.id, question.id, reply.id)


# ---- round trip ---------------------------------------------------------------------------


class TestEventStoreRoundTrip:
    def test_a_new_application_rebuilds_the_conversation_the_commands_built(
        self, node: Node, open_app: Callable[..., MessagingApplication]
    ) -> None:
        trip = plan_a_trip(node)

        reloaded = open_app().get_conversation(trip.conversation_id)

        assert reloaded.version == 8
        assert (reloaded.conversation_type, reloaded.title, reloaded.started_by) == ("GROUP", "Trip", ALICE)
        assert reloaded.participant_ids == [ALICE, BOB, CAROL]
        assert reloaded.last_seq == 2
        assert reloaded.read_up_to == {ALICE: 2, BOB: 1, CAROL: 1}
        assert reloaded.delivered_up_to == {ALICE: 2, BOB: 1, CAROL: 2}
        assert reloaded.typing_users() == [CAROL]

    def test_the_log_holds_each_event_once_in_the_order_it_was_decided(
        self, node: Node, open_app: Callable[..., MessagingApplication]
    ) -> None:
        trip = plan_a_trip(node)

        events = logged_events(open_app(), trip.conversation_id)

        assert [type(e).__name__ for e in events] == [
            "ConversationStarted",
            "MessageSent",
            "MessageSent",
            "MessageEdited",
            "MessageDeleted",
            "MessagesDelivered",
            "MessageRead",
            "TypingChanged",
        ]
        assert [e.originator_version for e in events] == list(range(1, 9))
        assert [e.actor_id for e in events] == [ALICE, BOB, ALICE, ALICE, ALICE, CAROL, CAROL, CAROL]
        started, question, reply, edited, deleted, delivered, read, typing = events
        assert started.participant_ids == [ALICE, BOB, CAROL]
        assert (question.message_id, question.seq, question.content) == (trip.question_id, 1, "who is driving?")
        assert question.client_message_id == "c-1"
        assert (reply.message_id, reply.seq, reply.parent_message_id) == (trip.reply_id, 2, trip.question_id)
        assert (edited.message_id, edited.seq, edited.content) == (trip.reply_id, 2, "me, at 9")
        assert (deleted.message_id, deleted.seq) == (trip.reply_id, 2)
        assert (delivered.up_to_seq, read.up_to_seq, typing.is_typing) == (2, 1, True)

    def test_a_new_node_knows_which_messages_were_deleted_and_refuses_to_edit_them(
        self, node: Node, open_node: Callable[[], Node]
    ) -> None:
        trip = plan_a_trip(node)

        restarted = open_node()

        index = restarted.app.lookup_messages([trip.question_id, trip.reply_id])
        assert (index[trip.question_id].deleted, index[trip.reply_id].deleted) == (False, True)
        assert restarted.app.get_message(trip.reply_id).content == "me"  # the message as it was sent
        with pytest.raises(MessageDeletedError):
            restarted.execute(EditMessage(ALICE, trip.reply_id, "me, at 10"))


# ---- idempotency --------------------------------------------------------------------------


class TestPostgresConnectionsLost:
    def test_commands_after_every_pooled_connection_was_cut_succeed_on_fresh_ones(
        self, node: Node, postgres_params: PostgresParams
    ) -> None:
        conversation = node.execute(StartConversation(ALICE, "DIRECT", (BOB,))).value
        node.execute(SendMessage(ALICE, conversation.id, "before", client_message_id="c-1"))
        # What a Postgres restart does to the pool: every connection it holds is dead.
        with connect(postgres_params, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )

        again = node.execute(SendMessage(ALICE, conversation.id, "before", client_message_id="c-1"))  # a lookup first
        after = node.execute(SendMessage(ALICE, conversation.id, "after"))

        assert again.value.seq == 1 and after.value.seq == 2
        assert [e.seq for e in logged_messages(node.app, conversation.id)] == [1, 2]


class TestDurableIdempotency:
    def test_the_same_client_message_id_twice_returns_the_same_message_and_logs_it_once(self, node: Node) -> None:
        conversation = node.execute(StartConversation(ALICE, "DIRECT", (BOB,))).value

        first = node.execute(SendMessage(ALICE, conversation.id, "hello", client_message_id="c-42"))
        retry = node.execute(SendMessage(ALICE, conversation.id, "hello?", client_message_id="c-42"))

        assert retry.value == first.value  # the message as first sent, content included
        assert retry.position is not None and first.position is not None
        assert retry.position >= first.position
        assert [e.message_id for e in logged_messages(node.app, conversation.id)] == [first.value.id]
        assert node.app.get_conversation(conversation.id).last_seq == 1
        assert node.writer.stats.resends == 1  # the index's key refused it; the batch was decided again

    def test_a_resend_in_a_batch_of_new_messages_gets_the_original_and_the_others_commit(
        self, node: Node, hold_batch: HoldBatch
    ) -> None:
        conversation = node.execute(StartConversation(ALICE, "DIRECT", (BOB,))).value
        first = node.execute(SendMessage(ALICE, conversation.id, "hello", client_message_id="c-1")).value

        with hold_batch(node):
            futures = [
                node.writer.submit(SendMessage(BOB, conversation.id, "hi", client_message_id="b-1")),
                node.writer.submit(SendMessage(ALICE, conversation.id, "hello", client_message_id="c-1")),
                node.writer.submit(SendMessage(ALICE, conversation.id, "how are you?", client_message_id="c-2")),
            ]
        settle(futures)

        bobs, resent, second = (f.result(RESULT_TIMEOUT_S).value for f in futures)
        assert node.writer.stats.largest_batch == 3 and node.writer.stats.resends == 1
        assert resent == first
        assert (bobs.seq, second.seq) == (2, 3)
        logged = [e.message_id for e in logged_messages(node.app, conversation.id)]
        assert logged == [first.id, bobs.id, second.id]

    def test_a_retry_after_a_restart_returns_the_same_message_and_logs_it_once(
        self, open_node: Callable[[], Node]
    ) -> None:
        # Alice's message is committed, then the node goes away before she hears back.
        before = open_node()
        conversation = before.execute(StartConversation(ALICE, "DIRECT", (BOB,))).value
        first = before.execute(SendMessage(ALICE, conversation.id, "hello", client_message_id="c-42")).value
        before.close()

        # Her client retries against the restarted node.
        after = open_node()
        retry = after.execute(SendMessage(ALICE, conversation.id, "hello", client_message_id="c-42")).value

        # Same message, logged once; the next new message continues the sequence.
        assert (retry.id, retry.seq) == (first.id, 1)
        following = after.execute(SendMessage(ALICE, conversation.id, "anyone?", client_message_id="c-43")).value
        assert following.seq == 2
        assert [e.message_id for e in logged_messages(after.app, conversation.id)] == [first.id, following.id]

    def test_a_retry_in_the_same_batch_is_logged_once(self, node: Node, hold_batch: HoldBatch) -> None:
        conversation = node.execute(StartConversation(ALICE, "DIRECT", (BOB,))).value

        with hold_batch(node):
            futures = [
                node.writer.submit(SendMessage(ALICE, conversation.id, "hello", client_message_id="c-42"))
                for _ in range(3)
            ]

        settle(futures)
        assert node.writer.stats.largest_batch == 3  # they really shared one batch
        results = [f.result(RESULT_TIMEOUT_S) for f in futures]
        first = results[0]
        assert {(r.value.id, r.value.seq, r.position) for r in results} == {(first.value.id, 1, first.position)}
        assert len(logged_messages(node.app, conversation.id)) == 1

    def test_the_same_client_message_id_from_two_senders_names_two_messages(self, node: Node) -> None:
        conversation = node.execute(StartConversation(ALICE, "DIRECT", (BOB,))).value

        alices = node.execute(SendMessage(ALICE, conversation.id, "hi", client_message_id="c-1")).value
        bobs = node.execute(SendMessage(BOB, conversation.id, "hi", client_message_id="c-1")).value

        assert alices.id != bobs.id
        assert [e.seq for e in logged_messages(node.app, conversation.id)] == [1, 2]


class TestIdempotentStartConversation:
    def test_starting_a_direct_conversation_again_returns_the_same_one_from_either_side(
        self, node: Node, open_node: Callable[[], Node]
    ) -> None:
        first = node.execute(StartConversation(ALICE, "DIRECT", (BOB,))).value
        again = node.execute(StartConversation(ALICE, "DIRECT", (BOB,))).value
        from_bob = node.execute(StartConversation(BOB, "DIRECT", (ALICE,))).value
        after_restart = open_node().execute(StartConversation(ALICE, "DIRECT", (BOB,))).value

        assert first.id == again.id == from_bob.id == after_restart.id
        assert [type(e).__name__ for e in logged_events(node.app, first.id)] == ["ConversationStarted"]

    def test_starting_an_item_conversation_again_returns_the_same_one_for_that_item(self, node: Node) -> None:
        first = node.execute(StartConversation(BOB, "ITEM", (ALICE,), item_id="bike-1")).value
        again = node.execute(StartConversation(ALICE, "ITEM", (BOB,), item_id="bike-1")).value
        other_item = node.execute(StartConversation(BOB, "ITEM", (ALICE,), item_id="lamp-2")).value

        assert first.id == again.id != other_item.id
        assert (first.item_id, other_item.item_id) == ("bike-1", "lamp-2")
        assert len(logged_events(node.app, first.id)) == 1
        assert len(logged_events(node.app, other_item.id)) == 1

    def test_starting_a_group_again_creates_a_new_one(self, node: Node) -> None:
        first = node.execute(StartConversation(ALICE, "GROUP", (BOB, CAROL), title="Trip")).value
        second = node.execute(StartConversation(ALICE, "GROUP", (BOB, CAROL), title="Trip")).value

        assert first.id != second.id
        assert len(logged_events(node.app, first.id)) == len(logged_events(node.app, second.id)) == 1

    def test_a_direct_start_repeated_in_the_same_batch_is_logged_once(self, node: Node, hold_batch: HoldBatch) -> None:
        with hold_batch(node):
            futures = [node.writer.submit(StartConversation(ALICE, "DIRECT", (DAVE,))) for _ in range(2)]
            futures.append(node.writer.submit(StartConversation(DAVE, "DIRECT", (ALICE,))))

        settle(futures)
        assert node.writer.stats.largest_batch == 3  # they really shared one batch
        assert {f.result(RESULT_TIMEOUT_S).value.id for f in futures} == {direct_id(ALICE, DAVE)}
        assert len(logged_events(node.app, direct_id(ALICE, DAVE))) == 1


# ---- all-or-nothing per command -----------------------------------------------------------


class TestOneBatchIsAllOrNothingPerCommand:
    def test_refused_commands_fail_with_their_domain_error_and_the_others_commit(
        self, node: Node, hold_batch: HoldBatch, open_app: Callable[..., MessagingApplication]
    ) -> None:
        # Alice and Bob have a direct conversation holding one message from Bob.
        conversation_id = node.execute(StartConversation(ALICE, "DIRECT", (BOB,))).value.id
        earlier = node.execute(SendMessage(BOB, conversation_id, "earlier")).value

        # Good and bad commands arrive together and are decided in one batch.
        script: list[tuple[Command, type[Exception] | None]] = [
            (SendMessage(ALICE, conversation_id, "one"), None),
            (SendMessage(MALLORY, conversation_id, "let me in", client_message_id="m-1"), NotParticipantError),
            (SendMessage(BOB, conversation_id, "   "), InvalidContentError),
            (SendMessage(BOB, conversation_id, "two"), None),
            (EditMessage(ALICE, earlier.id, "not yours"), NotMessageSenderError),
            (SendMessage(ALICE, conversation_id, "re: ?", parent_message_id=uuid4()), UnknownParentMessageError),
            (SendMessage(ALICE, conversation_id, "clip", message_type="VIDEO"), InvalidMessageTypeError),
            (SendMessage(ALICE, uuid4(), "into the void"), ConversationNotFoundError),
            (MarkRead(ALICE, conversation_id), None),  # Bob's "two" is the latest she has not read
            (SendMessage(BOB, conversation_id, "three", client_message_id="b-3"), None),
        ]
        with hold_batch(node):
            futures = [node.writer.submit(command) for command, _ in script]
        settle(futures)
        assert node.writer.stats.largest_batch == len(script)  # they really shared one batch

        # Each refused command fails with its own domain error; the others succeed.
        accepted: list[CommandResult[Any]] = []
        for future, (_, error) in zip(futures, script):
            if error is None:
                accepted.append(future.result(RESULT_TIMEOUT_S))
            else:
                with pytest.raises(error):
                    future.result(RESULT_TIMEOUT_S)

        # The refusals consumed no seq, and the log holds exactly the accepted commands' events.
        one, two, read, three = accepted
        assert (one.value.seq, two.value.seq, three.value.seq) == (2, 3, 4)
        assert (read.value.up_to_seq, read.value.changed) == (3, True)
        in_batch = [e for e in logged_events(open_app(), conversation_id) if e.originator_version > 2]
        assert [(type(e).__name__, e.actor_id) for e in in_batch] == [
            ("MessageSent", ALICE),
            ("MessageSent", BOB),
            ("MessageRead", ALICE),
            ("MessageSent", BOB),
        ]
        assert [e.content for e in in_batch if isinstance(e, Conversation.MessageSent)] == ["one", "two", "three"]
        assert is_increasing([r.position for r in accepted])  # type: ignore[misc]
        # Mallory's refused message never reached the message index.
        assert node.app.lookup_messages([message_id_for(conversation_id, MALLORY, "m-1")]) == {}

    def test_a_conversation_started_in_the_batch_survives_refusals_on_it(
        self, node: Node, hold_batch: HoldBatch
    ) -> None:
        conversation_id = direct_id(ALICE, DAVE)

        with hold_batch(node):
            started = node.writer.submit(StartConversation(ALICE, "DIRECT", (DAVE,)))
            intruder = node.writer.submit(SendMessage(MALLORY, conversation_id, "hi all"))
            hello = node.writer.submit(SendMessage(DAVE, conversation_id, "hi alice"))
            third_wheel = node.writer.submit(AddParticipant(ALICE, conversation_id, CAROL))
            answer = node.writer.submit(SendMessage(ALICE, conversation_id, "hi dave"))
        settle([started, intruder, hello, third_wheel, answer])
        assert node.writer.stats.largest_batch == 5  # they really shared one batch

        assert started.result(RESULT_TIMEOUT_S).value.id == conversation_id
        with pytest.raises(NotParticipantError):
            intruder.result(RESULT_TIMEOUT_S)
        with pytest.raises(UnsupportedOperationError):
            third_wheel.result(RESULT_TIMEOUT_S)
        assert (hello.result(RESULT_TIMEOUT_S).value.seq, answer.result(RESULT_TIMEOUT_S).value.seq) == (1, 2)
        assert [type(e).__name__ for e in logged_events(node.app, conversation_id)] == [
            "ConversationStarted",
            "MessageSent",
            "MessageSent",
        ]

    def test_a_batch_of_sends_with_new_client_ids_never_asks_the_message_index(
        self, node: Node, hold_batch: HoldBatch, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        conversation_id = node.execute(StartConversation(ALICE, "DIRECT", (BOB,))).value.id
        lookups: list[list[UUID]] = []
        lookup = node.app.lookup_messages

        def counting_lookup(message_ids: Any) -> Any:
            lookups.append(list(message_ids))
            return lookup(lookups[-1])

        monkeypatch.setattr(node.app, "lookup_messages", counting_lookup)

        with hold_batch(node):
            futures = [
                node.writer.submit(SendMessage(ALICE, conversation_id, f"m{i}", client_message_id=f"c-{i}"))
                for i in range(10)
            ]
        assert [f.result(RESULT_TIMEOUT_S).value.seq for f in futures] == list(range(1, 11))
        assert node.writer.stats.largest_batch == 10  # they really shared one batch

        assert lookups == []  # new ids are refused by the index's key if resent, not looked up


# ---- concurrency --------------------------------------------------------------------------


class TestSubmittingFromAnEventLoop:
    def test_a_batch_settles_its_loop_futures_with_results_and_domain_errors(
        self, node: Node, hold_batch: HoldBatch
    ) -> None:
        conversation_id = node.execute(StartConversation(ALICE, "DIRECT", (BOB,))).value.id
        script: list[Command] = [
            SendMessage(ALICE, conversation_id, "one"),
            SendMessage(MALLORY, conversation_id, "let me in"),
            SendMessage(BOB, conversation_id, "two"),
        ]

        async def submit_in_one_batch() -> list[Any]:
            with hold_batch(node):  # blocks this loop too: every future settles after the batch
                futures = [node.writer.submit_async(command) for command in script]
            return await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), RESULT_TIMEOUT_S)

        one, refused, two = asyncio.run(submit_in_one_batch())

        assert node.writer.stats.largest_batch == len(script)
        assert (one.value.seq, two.value.seq) == (1, 2)
        assert isinstance(refused, NotParticipantError)

    def test_a_stopped_writer_fails_a_loop_submission_at_once(self, node: Node) -> None:
        node.writer.stop()

        async def submit() -> Any:
            return await node.writer.submit_async(SendMessage(ALICE, uuid4(), "late"))

        with pytest.raises(WriterStoppedError):
            asyncio.run(submit())


class TestAWriterOnTheServingLoop:
    """Loop mode only: what the writer does on the loop itself and what it hands to a thread."""

    @pytest.fixture
    def writer_mode(self) -> str:
        return "loop"

    def test_sends_to_a_cached_conversation_are_decided_and_appended_on_the_loop(
        self, node: Node, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        conversation_id = node.execute(StartConversation(ALICE, "DIRECT", (BOB,))).value.id
        on_a_thread: list[int] = []
        process = node.writer._process

        def counting_process(batch: list[Any]) -> None:
            on_a_thread.append(len(batch))
            process(batch)

        monkeypatch.setattr(node.writer, "_process", counting_process)

        seqs = [node.execute(SendMessage(ALICE, conversation_id, f"m{i}")).value.seq for i in range(5)]

        assert seqs == [1, 2, 3, 4, 5]
        assert on_a_thread == []
        assert [e.content for e in logged_messages(node.app, conversation_id)] == [f"m{i}" for i in range(5)]

    def test_a_conversation_the_loop_has_not_cached_is_loaded_on_a_thread_then_decided_on_the_loop(
        self, open_node: Callable[[], Node], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        first = open_node()
        conversation_id = first.execute(StartConversation(ALICE, "DIRECT", (BOB,))).value.id
        first.execute(SendMessage(ALICE, conversation_id, "before the restart"))
        first.close()

        restarted = open_node()  # an empty cache: the loop cannot decide without the store
        decided_on_a_thread: list[int] = []
        process = restarted.writer._process

        def counting_process(batch: list[Any], **options: Any) -> None:
            decided_on_a_thread.append(len(batch))
            process(batch, **options)

        monkeypatch.setattr(restarted.writer, "_process", counting_process)
        sent = restarted.execute(SendMessage(BOB, conversation_id, "after the restart")).value

        assert sent.seq == 2
        assert decided_on_a_thread == []
        assert [e.content for e in logged_messages(restarted.app, conversation_id)] == [
            "before the restart",
            "after the restart",
        ]

    def test_a_backlog_is_decided_on_the_loop_at_most_100_commands_at_a_time(
        self, node: Node, hold_batch: HoldBatch
    ) -> None:
        conversation_id = node.execute(StartConversation(ALICE, "DIRECT", (BOB,))).value.id

        with hold_batch(node):
            futures = [node.writer.submit(SendMessage(ALICE, conversation_id, f"m{i}")) for i in range(150)]

        assert [f.result(RESULT_TIMEOUT_S).value.seq for f in futures] == list(range(1, 151))
        assert node.writer.stats.largest_batch == MAX_LOOP_BATCH_COMMANDS == 100

    def test_stopping_from_the_writers_own_loop_must_be_awaited(self, node: Node) -> None:
        assert node.loop is not None

        async def stop_blocking() -> None:
            node.writer.stop()

        with pytest.raises(RuntimeError, match="stop_on_loop"):
            node.loop.run(stop_blocking())
        assert node.writer.is_running


class TestConcurrentSendersOnOneNode:
    def test_eight_threads_sending_200_messages_each_to_one_conversation_get_seq_1_to_1600(
        self, node: Node, open_app: Callable[..., MessagingApplication]
    ) -> None:
        senders = [f"user-{n}" for n in range(8)]
        per_sender = 200
        conversation_id = node.execute(StartConversation(senders[0], "GROUP", tuple(senders[1:]))).value.id

        def send_all(sender: str) -> Callable[[], list[CommandResult[Any]]]:
            return lambda: [
                node.execute(SendMessage(sender, conversation_id, f"{sender} #{i}")) for i in range(per_sender)
            ]

        results = run_concurrently({sender: send_all(sender) for sender in senders})

        # Every caller got a distinct seq, in its own sending order, with increasing positions.
        all_seqs = sorted(r.value.seq for rs in results.values() for r in rs)
        assert all_seqs == list(range(1, 1601))
        for sender_results in results.values():
            assert is_increasing([r.value.seq for r in sender_results])
            assert is_increasing([r.position for r in sender_results])
        # The log agrees, read by an application that shares nothing with the writer.
        reader = open_app()
        assert reader.repository.get(conversation_id).last_seq == 1600
        logged = logged_messages(reader, conversation_id)
        assert [e.seq for e in logged] == list(range(1, 1601))
        assert len({e.message_id for e in logged}) == 1600
        for sender in senders:
            assert [e.content for e in logged if e.actor_id == sender] == [f"{sender} #{i}" for i in range(per_sender)]

    def test_sixty_four_senders_in_sixty_four_conversations_each_get_seq_1_to_20(
        self, node: Node, open_app: Callable[..., MessagingApplication]
    ) -> None:
        per_conversation = 20

        def converse(n: int) -> Callable[[], list[int]]:
            def script() -> list[int]:
                conversation_id = node.execute(StartConversation(f"seller-{n}", "DIRECT", (f"buyer-{n}",))).value.id
                return [
                    node.execute(SendMessage(f"seller-{n}", conversation_id, f"#{i}")).value.seq
                    for i in range(per_conversation)
                ]

            return script

        results = run_concurrently({f"seller-{n}": converse(n) for n in range(64)})

        reader = open_app()
        for n in range(64):
            conversation_id = direct_id(f"seller-{n}", f"buyer-{n}")
            assert results[f"seller-{n}"] == list(range(1, per_conversation + 1))
            assert reader.repository.get(conversation_id).last_seq == per_conversation
            logged = logged_messages(reader, conversation_id)
            assert [(e.seq, e.content) for e in logged] == [(i + 1, f"#{i}") for i in range(per_conversation)]


def two_nodes_send(open_node: Callable[[], Node], per_sender: int) -> tuple[UUID, dict[str, Any], Node]:
    """Two nodes on one database; four senders on each write to one group conversation.

    Returns the conversation, each sender's outcomes (a result or the exception, so one failure
    does not hide the others) and the first node.
    """
    first, second = open_node(), open_node()
    senders = [f"user-{n}" for n in range(8)]
    conversation_id = first.execute(StartConversation(senders[0], "GROUP", tuple(senders[1:]))).value.id

    def send_all(node: Node, sender: str) -> Callable[[], list[Any]]:
        def script() -> list[Any]:
            outcomes: list[Any] = []
            for i in range(per_sender):
                try:
                    outcomes.append(node.execute(SendMessage(sender, conversation_id, f"{sender} #{i}")))
                except Exception as error:  # noqa: BLE001 - collected and asserted on by the tests
                    outcomes.append(error)
            return outcomes

        return script

    scripts = {sender: send_all(first if n < 4 else second, sender) for n, sender in enumerate(senders)}
    return conversation_id, run_concurrently(scripts), first


class TestConcurrentSendersOnTwoNodes:
    PER_SENDER = 50  # 8 senders x 50 = 400 commands, about a second of contention

    def test_the_log_stays_gapless_and_holds_exactly_the_commands_that_succeeded(
        self, open_node: Callable[[], Node], open_app: Callable[..., MessagingApplication]
    ) -> None:
        conversation_id, outcomes, _ = two_nodes_send(open_node, self.PER_SENDER)

        succeeded = [o for os in outcomes.values() for o in os if isinstance(o, CommandResult)]
        failed = [o for os in outcomes.values() for o in os if not isinstance(o, CommandResult)]
        # Whatever failed, failed loudly with the conflict error, never with something else.
        assert all(isinstance(error, ConcurrencyConflictError) for error in failed)
        # The log's seqs are gapless and are exactly those the callers were told.
        reader = open_app()
        logged = logged_messages(reader, conversation_id)
        assert [e.seq for e in logged] == list(range(1, len(succeeded) + 1))
        assert sorted((r.value.seq, r.value.id) for r in succeeded) == [(e.seq, e.message_id) for e in logged]
        assert reader.repository.get(conversation_id).last_seq == len(succeeded)
        # Each sender's successful messages are logged in the order they were sent.
        for sender, sender_outcomes in outcomes.items():
            told = [o.value.content for o in sender_outcomes if isinstance(o, CommandResult)]
            assert [e.content for e in logged if e.actor_id == sender] == told

    def test_no_command_is_lost(
        self, open_node: Callable[[], Node], open_app: Callable[..., MessagingApplication]
    ) -> None:
        conversation_id, outcomes, _ = two_nodes_send(open_node, self.PER_SENDER)

        failed = [repr(o) for os in outcomes.values() for o in os if not isinstance(o, CommandResult)]
        assert failed == []
        logged = logged_messages(open_app(), conversation_id)
        assert [e.seq for e in logged] == list(range(1, 8 * self.PER_SENDER + 1))


class TestAlternatingNodes:
    def test_after_a_first_conflict_a_node_reloads_what_the_other_changed_instead_of_conflicting(
        self, open_node: Callable[[], Node]
    ) -> None:
        # A buyer on one node and a seller on another take turns in one conversation: each
        # node's cached aggregate is stale at every turn.
        buyer_node, seller_node = open_node(), open_node()
        conversation_id = buyer_node.execute(StartConversation(ALICE, "DIRECT", (BOB,))).value.id
        turns = 20
        for turn in range(turns):
            buyer_node.execute(SendMessage(ALICE, conversation_id, f"buyer {turn}"))
            seller_node.execute(SendMessage(BOB, conversation_id, f"seller {turn}"))

        conflicts = buyer_node.writer.stats.conflicts + seller_node.writer.stats.conflicts
        reloads = buyer_node.writer.stats.stale_reloads + seller_node.writer.stats.stale_reloads
        assert conflicts <= 2  # the first stale turn on each node, at most
        assert reloads >= 2 * turns - 4  # every later turn reloads instead of conflicting
        logged = logged_messages(buyer_node.app, conversation_id)
        assert [e.seq for e in logged] == list(range(1, 2 * turns + 1))


# ---- positions ----------------------------------------------------------------------------


class TestLogPositions:
    def test_each_command_returns_the_position_of_its_last_event_and_they_increase(self, node: Node) -> None:
        # One user's commands, one after another.
        conversation_id = node.execute(StartConversation(ALICE, "DIRECT", (BOB,))).value.id
        first = node.execute(SendMessage(ALICE, conversation_id, "one")).value
        results = [
            node.execute(StartConversation(ALICE, "DIRECT", (CAROL,))),
            node.execute(SendMessage(ALICE, conversation_id, "two")),
            node.execute(EditMessage(ALICE, first.id, "one!")),
            node.execute(SetTyping(ALICE, conversation_id, True)),
            node.execute(SendMessage(ALICE, conversation_id, "three")),
            node.execute(DeleteMessage(ALICE, first.id)),
        ]

        positions = [r.position for r in results]
        assert all(isinstance(p, int) for p in positions)
        assert is_increasing(positions)  # type: ignore[arg-type]
        # Each position is the notification of that command's event in the log.
        expected = [
            (direct_id(ALICE, CAROL), 1),
            (conversation_id, 3),
            (conversation_id, 4),
            (conversation_id, 5),
            (conversation_id, 6),
            (conversation_id, 7),
        ]
        notifications = [
            node.app.recorder.select_notifications(start=position, limit=1)[0]
            for position in positions  # type: ignore[misc]
        ]
        assert [(n.originator_id, n.originator_version) for n in notifications] == expected

    def test_a_command_that_changes_nothing_returns_no_position(self, node: Node) -> None:
        conversation_id = node.execute(StartConversation(ALICE, "DIRECT", (BOB,))).value.id
        node.execute(SendMessage(ALICE, conversation_id, "hi"))
        assert node.execute(MarkRead(BOB, conversation_id)).position is not None

        again = node.execute(MarkRead(BOB, conversation_id))
        not_typing = node.execute(SetTyping(BOB, conversation_id, False))

        assert (again.position, again.value.changed) == (None, False)
        assert (not_typing.position, not_typing.value.changed) == (None, False)
        assert len(logged_events(node.app, conversation_id)) == 3


# ---- bounded loading ----------------------------------------------------------------------


class TestBoundedLoading:
    MESSAGES = 250

    def chat(self, node: Node) -> UUID:
        """Alice and Bob exchange 250 messages, one command at a time, with receipts and typing."""
        conversation_id = node.execute(StartConversation(ALICE, "DIRECT", (BOB,))).value.id
        for i in range(self.MESSAGES):
            sender, other = (ALICE, BOB) if i % 2 else (BOB, ALICE)
            node.execute(SendMessage(sender, conversation_id, f"#{i}"))
            if i % 25 == 0:
                node.execute(MarkDelivered(other, conversation_id, i + 1))
        node.execute(SetTyping(ALICE, conversation_id, True))
        return conversation_id

    def test_a_cold_load_reads_the_latest_snapshot_and_fewer_than_100_events(
        self,
        node: Node,
        open_app: Callable[..., MessagingApplication],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        conversation_id = self.chat(node)
        total_events = len(logged_events(node.app, conversation_id))

        # A new application finds a snapshot at or beyond version 200...
        cold = open_app()
        assert cold.snapshots is not None
        snapshots = list(cold.snapshots.get(conversation_id, desc=True, limit=1))
        assert snapshots and snapshots[0].originator_version >= 2 * SNAPSHOT_INTERVAL
        snapshot_version = snapshots[0].originator_version
        assert len(list(cold.events.get(conversation_id, gt=snapshot_version))) < SNAPSHOT_INTERVAL

        # ...and loading the conversation reads only the events after it.
        rows_read: list[int] = []
        select_events = cold.recorder.select_events

        def counting_select_events(*args: Any, **kwargs: Any) -> Any:
            rows = select_events(*args, **kwargs)
            rows_read.append(len(rows))
            return rows

        monkeypatch.setattr(cold.recorder, "select_events", counting_select_events)
        conversation = cold.repository.get(conversation_id)

        assert sum(rows_read) == total_events - snapshot_version < SNAPSHOT_INTERVAL
        assert (conversation.version, conversation.last_seq) == (total_events, self.MESSAGES)
        assert conversation.typing_users() == [ALICE]

    def test_a_conversation_loaded_from_its_snapshot_equals_one_replayed_from_the_whole_log(
        self, node: Node, open_app: Callable[..., MessagingApplication]
    ) -> None:
        conversation_id = self.chat(node)

        from_snapshot = open_app().repository.get(conversation_id)
        replayer = open_app(IS_SNAPSHOTTING_ENABLED="n")
        assert replayer.snapshots is None
        replayed = replayer.repository.get(conversation_id)

        assert state_of(from_snapshot) == state_of(replayed)
