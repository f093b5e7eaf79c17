"""`AuditLog` and `loopify audit` against a real Postgres event store.

One story feeds every test: Alice talks to Bob directly and in a group with Carol, edits and
deletes a message, and the group's members read and type. The tests then ask the log about it
by conversation, actor, message and time, through the service and through the command line.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from uuid import UUID, uuid4

import pytest

from application import audit as audit_module
from application.audit import AuditEntry, AuditLog, AuditQuery
from application.commands import (
    DeleteMessage,
    EditMessage,
    MarkRead,
    SendMessage,
    SetTyping,
    StartConversation,
)
from application.group_commit import GroupCommitWriter
from application.messaging import MessagingApplication
from infrastructure.postgres_url import parse_database_url
from interfaces.audit_cli import add_audit_parser, run_audit

ALICE, BOB, CAROL = "alice", "bob", "carol"
REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT_TIMEOUT_S = 120  # a bound on a hung subprocess, not a speed expectation


@dataclass(frozen=True)
class Story:
    direct_id: UUID
    group_id: UUID
    hello_id: UUID  # Alice's group message: sent, edited, then deleted
    reply_id: UUID  # Carol's group message, sent between the edit and the deletion
    ping_id: UUID  # Bob's direct message


@pytest.fixture
def app(database_url: str) -> Iterator[MessagingApplication]:
    app = MessagingApplication(env=parse_database_url(database_url).eventsourcing_env())
    yield app
    app.close()


@pytest.fixture
def writer(app: MessagingApplication) -> Iterator[GroupCommitWriter]:
    writer = GroupCommitWriter(app)
    writer.start()
    yield writer
    writer.stop()


@pytest.fixture
def audit(app: MessagingApplication) -> AuditLog:
    return AuditLog(app)


@pytest.fixture
def story(writer: GroupCommitWriter) -> Story:
    run = writer.execute
    # Alice opens a direct chat with Bob and a group with Bob and Carol.
    direct_id = run(StartConversation(ALICE, "DIRECT", (BOB,))).value.id
    group_id = run(StartConversation(ALICE, "GROUP", (BOB, CAROL), title="Trip")).value.id
    # Bob pings Alice directly.
    ping_id = run(SendMessage(BOB, direct_id, "ping")).value.id
    # Alice greets the group, then fixes her greeting.
    hello_id = run(SendMessage(ALICE, group_id, "helo")).value.id
    run(EditMessage(ALICE, hello_id, "hello all"))
    # Carol types and replies; Bob reads everything.
    run(SetTyping(CAROL, group_id, True))
    reply_id = run(SendMessage(CAROL, group_id, "hi!\nwhere to?")).value.id
    run(MarkRead(BOB, group_id))
    # Alice deletes her greeting after all.
    run(DeleteMessage(ALICE, hello_id))
    return Story(direct_id, group_id, hello_id, reply_id, ping_id)


def types(entries: list[AuditEntry]) -> list[str]:
    return [entry.type for entry in entries]


def positions(entries: list[AuditEntry]) -> list[int]:
    return [entry.position for entry in entries]


class TestAuditByConversation:
    def test_it_lists_every_event_of_the_conversation_in_log_order(self, audit: AuditLog, story: Story) -> None:
        entries = audit.list_entries(AuditQuery(conversation_id=story.group_id))

        assert types(entries) == [
            "ConversationStarted",
            "MessageSent",
            "MessageEdited",
            "TypingChanged",
            "MessageSent",
            "MessageRead",
            "MessageDeleted",
        ]
        assert {entry.conversation_id for entry in entries} == {story.group_id}
        assert positions(entries) == sorted(set(positions(entries)))

    def test_positions_are_the_notification_ids_of_the_events_in_the_log(
        self, app: MessagingApplication, audit: AuditLog, story: Story
    ) -> None:
        notifications = app.recorder.select_notifications(1, 1000)
        in_group = [n.id for n in notifications if n.originator_id == story.group_id]

        assert positions(audit.list_entries(AuditQuery(conversation_id=story.group_id))) == in_group

    def test_the_started_event_carries_its_own_fields_and_no_envelope(self, audit: AuditLog, story: Story) -> None:
        started = audit.list_entries(AuditQuery(conversation_id=story.group_id))[0]

        assert started.actor == ALICE
        assert started.data == {
            "conversation_type": "GROUP",
            "participant_ids": [ALICE, BOB, CAROL],
            "title": "Trip",
            "item_id": None,
        }

    def test_an_actor_filter_narrows_the_conversation_to_that_actors_events(
        self, audit: AuditLog, story: Story
    ) -> None:
        entries = audit.list_entries(AuditQuery(conversation_id=story.group_id, actor=CAROL))

        assert types(entries) == ["TypingChanged", "MessageSent"]
        assert {entry.actor for entry in entries} == {CAROL}

    def test_a_limit_keeps_the_oldest_entries(self, audit: AuditLog, story: Story) -> None:
        everything = audit.list_entries(AuditQuery(conversation_id=story.group_id))

        assert audit.list_entries(AuditQuery(conversation_id=story.group_id, limit=3)) == everything[:3]

    def test_an_unknown_conversation_has_no_entries(self, audit: AuditLog, story: Story) -> None:
        assert audit.list_entries(AuditQuery(conversation_id=uuid4())) == []

    def test_small_pages_give_the_same_answer_as_one_page(
        self, audit: AuditLog, story: Story, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        whole = audit.list_entries(AuditQuery(conversation_id=story.group_id))
        whole_log = audit.list_entries(AuditQuery())

        monkeypatch.setattr(audit_module, "PAGE_SIZE", 2)

        assert audit.list_entries(AuditQuery(conversation_id=story.group_id)) == whole
        assert audit.list_entries(AuditQuery()) == whole_log


class TestAuditByActor:
    def test_it_lists_the_actors_events_across_conversations(self, audit: AuditLog, story: Story) -> None:
        entries = audit.list_entries(AuditQuery(actor=ALICE))

        assert [(entry.conversation_id, entry.type) for entry in entries] == [
            (story.direct_id, "ConversationStarted"),
            (story.group_id, "ConversationStarted"),
            (story.group_id, "MessageSent"),
            (story.group_id, "MessageEdited"),
            (story.group_id, "MessageDeleted"),
        ]

    def test_an_actor_with_no_events_has_no_entries(self, audit: AuditLog, story: Story) -> None:
        assert audit.list_entries(AuditQuery(actor="mallory")) == []


class TestAuditByMessage:
    def test_it_lists_the_send_edit_and_delete_of_the_message_in_order(self, audit: AuditLog, story: Story) -> None:
        entries = audit.list_entries(AuditQuery(message_id=story.hello_id))

        assert types(entries) == ["MessageSent", "MessageEdited", "MessageDeleted"]
        assert [entry.data.get("content") for entry in entries] == ["helo", "hello all", None]
        assert {entry.data["message_id"] for entry in entries} == {str(story.hello_id)}
        assert {entry.actor for entry in entries} == {ALICE}
        assert positions(entries) == sorted(positions(entries))

    def test_other_messages_of_the_same_conversation_are_left_out(self, audit: AuditLog, story: Story) -> None:
        entries = audit.list_entries(AuditQuery(message_id=story.reply_id))

        assert types(entries) == ["MessageSent"]
        assert entries[0].data["content"] == "hi!\nwhere to?"

    def test_the_message_history_matches_the_conversation_history(self, audit: AuditLog, story: Story) -> None:
        in_conversation = [
            entry
            for entry in audit.list_entries(AuditQuery(conversation_id=story.group_id))
            if entry.data.get("message_id") == str(story.hello_id)
        ]

        assert audit.list_entries(AuditQuery(message_id=story.hello_id)) == in_conversation

    def test_a_message_filter_combines_with_an_actor_filter(self, audit: AuditLog, story: Story) -> None:
        assert audit.list_entries(AuditQuery(message_id=story.hello_id, actor=BOB)) == []

    def test_a_message_of_another_conversation_than_the_one_asked_for_has_no_entries(
        self, audit: AuditLog, story: Story
    ) -> None:
        assert audit.list_entries(AuditQuery(message_id=story.hello_id, conversation_id=story.direct_id)) == []

    def test_an_unknown_message_has_no_entries(self, audit: AuditLog, story: Story) -> None:
        assert audit.list_entries(AuditQuery(message_id=uuid4())) == []


class TestAuditByTime:
    def test_since_is_inclusive_and_until_exclusive_over_the_whole_log(self, audit: AuditLog, story: Story) -> None:
        everything = audit.list_entries(AuditQuery())
        since, until = everything[2].at, everything[5].at

        window = audit.list_entries(AuditQuery(since=since, until=until))

        assert window == everything[2:5]

    def test_a_time_range_combines_with_a_conversation(self, audit: AuditLog, story: Story) -> None:
        group = audit.list_entries(AuditQuery(conversation_id=story.group_id))

        window = audit.list_entries(AuditQuery(conversation_id=story.group_id, since=group[1].at, until=group[4].at))

        assert window == group[1:4]

    def test_since_alone_keeps_everything_from_that_moment(self, audit: AuditLog, story: Story) -> None:
        everything = audit.list_entries(AuditQuery())

        assert audit.list_entries(AuditQuery(since=everything[-2].at)) == everything[-2:]


class TestAuditIsOneMoment:
    @pytest.mark.parametrize("scope", ["whole log", "conversation", "message"])
    def test_events_appended_after_the_query_started_are_not_listed(
        self, audit: AuditLog, writer: GroupCommitWriter, story: Story, scope: str
    ) -> None:
        query = {
            "whole log": AuditQuery(),
            "conversation": AuditQuery(conversation_id=story.direct_id),
            "message": AuditQuery(message_id=story.ping_id),
        }[scope]
        before = audit.list_entries(query)

        entries = audit.iter_entries(query)
        writer.execute(EditMessage(BOB, story.ping_id, "ping again"))

        assert list(entries) == before
        assert len(audit.list_entries(query)) == len(before) + 1


def audit_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="loopify")
    add_audit_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["audit", *argv])


class TestAuditCommandLine:
    def test_json_output_is_one_object_per_line_with_the_documented_keys(
        self, app: MessagingApplication, story: Story
    ) -> None:
        out = io.StringIO()

        code = run_audit(audit_args("--message", str(story.hello_id), "--json"), app, out)

        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        assert code == 0
        assert [list(line) for line in lines] == [["position", "conversationId", "type", "actor", "at", "data"]] * 3
        sent = lines[0]
        assert sent["conversationId"] == str(story.group_id)
        assert sent["type"] == "MessageSent"
        assert sent["actor"] == ALICE
        assert sent["at"].endswith("Z")
        assert datetime.fromisoformat(sent["at"]).utcoffset().total_seconds() == 0  # type: ignore[union-attr]
        assert sent["data"]["content"] == "helo"
        assert sent["data"]["message_id"] == str(story.hello_id)

    def test_the_table_lists_one_row_per_entry_under_a_header(self, app: MessagingApplication, story: Story) -> None:
        out = io.StringIO()

        code = run_audit(audit_args("--conversation", str(story.direct_id)), app, out)

        header, *rows = out.getvalue().splitlines()
        assert code == 0
        assert header.split() == ["POSITION", "AT", "CONVERSATION", "TYPE", "ACTOR", "DATA"]
        assert [row.split()[3] for row in rows] == ["ConversationStarted", "MessageSent"]
        assert 'content="ping"' in rows[1]

    def test_the_script_prints_what_the_cli_prints(
        self, app: MessagingApplication, story: Story, database_url: str, redis_url: str, tmp_path: Path
    ) -> None:
        out = io.StringIO()
        run_audit(audit_args("--conversation", str(story.group_id), "--json"), app, out)
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "JWT_SECRET": "audit-test-secret",
            "LOOPIFY_DATA_DIR": str(tmp_path),
        }

        result = subprocess.run(
            [sys.executable, str(REPO_ROOT / "scripts" / "audit.py"), "--conversation", str(story.group_id), "--json"],
            cwd=tmp_path,  # not the repo root: the script must find the packages itself
            env=env,
            capture_output=True,
            text=True,
            timeout=SCRIPT_TIMEOUT_S,
        )

        assert result.returncode == 0, result.stderr
        assert result.stdout == out.getvalue()
        assert len(result.stdout.splitlines()) == 7

    def test_the_script_refuses_a_bad_id_with_exit_code_2(self, tmp_path: Path) -> None:
        result = subprocess.run(
            [sys.executable, str(REPO_ROOT / "scripts" / "audit.py"), "--conversation", "not-an-id"],
            cwd=tmp_path,
            env={**os.environ, "LOOPIFY_DATA_DIR": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=SCRIPT_TIMEOUT_S,
        )

        assert result.returncode == 2
        assert "not a UUID" in result.stderr
        assert result.stdout == ""
