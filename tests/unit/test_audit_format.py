"""Audit output and input without a database: entries from events, JSON lines, the table, arguments.

Events come from an in-memory `Conversation`, so the entries are the real shapes the log holds.
"""

from __future__ import annotations

import argparse
import io
import json
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any, cast
from uuid import UUID, uuid4

import pytest

from application.audit import AuditEntry, AuditQuery, InvalidAuditQueryError, audit_entry
from application.messaging import MessagingApplication
from domain.conversation import Conversation
from domain.values import ConversationType, MessageFacts
from interfaces.audit_cli import (
    SUMMARY_MAX_CHARS,
    add_audit_parser,
    audit_query,
    json_line,
    run_audit,
    summarise,
    table_lines,
)

ALICE, BOB = "alice", "bob"
CONVERSATION_ID = UUID("0aa9de32-16e9-405a-a6f2-b3cd629362ce")
MESSAGE_ID = UUID("cef6bd4a-30fa-4c64-aae8-c7b0a4a9e54a")
AT = datetime(2026, 11, 27, 1, 5, 6, 123456, tzinfo=timezone.utc)


def story_events() -> list[Any]:
    """Alice starts a direct chat with Bob, sends, edits and deletes a message; Bob reads."""
    conversation = Conversation.start(CONVERSATION_ID, ALICE, ConversationType.DIRECT, frozenset({BOB}))
    conversation.send_message(ALICE, MESSAGE_ID, "helo")
    facts = MessageFacts(MESSAGE_ID, CONVERSATION_ID, ALICE, 1, False)
    conversation.edit_message(ALICE, facts, "hello")
    conversation.mark_read(BOB)
    conversation.delete_message(ALICE, facts)
    # One second apart: the clock may give several events the same microsecond, time filters need order.
    events = conversation.collect_events()
    return [replace(event, timestamp=AT + timedelta(seconds=i)) for i, event in enumerate(events)]


def entry(**changes: Any) -> AuditEntry:
    fields: dict[str, Any] = {
        "position": 7,
        "conversation_id": CONVERSATION_ID,
        "type": "MessageSent",
        "actor": ALICE,
        "at": AT,
        "data": {"message_id": str(MESSAGE_ID), "seq": 1, "content": "hello", "parent_message_id": None},
    }
    return AuditEntry(**{**fields, **changes})


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="loopify")
    add_audit_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["audit", *argv])


class Untouchable:
    """Stands in for the application where a refused query must never reach it."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the application was used ({name}) although the query was refused")


class TestEntriesFromEvents:
    def test_type_is_the_event_class_name_and_actor_the_events_actor(self) -> None:
        started, sent, edited, read, deleted = (audit_entry(i, e) for i, e in enumerate(story_events(), 1))

        assert [started.type, sent.type, edited.type, read.type, deleted.type] == [
            "ConversationStarted",
            "MessageSent",
            "MessageEdited",
            "MessageRead",
            "MessageDeleted",
        ]
        assert [started.actor, read.actor, deleted.actor] == [ALICE, BOB, ALICE]
        assert {started.conversation_id, deleted.conversation_id} == {CONVERSATION_ID}

    def test_data_holds_the_events_own_fields_without_the_envelope(self) -> None:
        started, sent, *_ = story_events()

        assert audit_entry(1, started).data == {
            "conversation_type": "DIRECT",
            "participant_ids": [ALICE, BOB],
            "title": None,
            "item_id": None,
        }
        assert audit_entry(2, sent).data == {
            "message_id": str(MESSAGE_ID),
            "seq": 1,
            "content": "helo",
            "message_type": "TEXT",
            "parent_message_id": None,
            "client_message_id": None,
        }

    def test_data_is_json_ready_and_at_is_utc(self) -> None:
        for position, event in enumerate(story_events(), 1):
            made = audit_entry(position, event)

            assert json.loads(json.dumps(made.data)) == made.data
            assert made.at == event.timestamp
            assert made.at.utcoffset() == timedelta(0)


class TestJsonLines:
    def test_a_line_is_one_object_with_exactly_the_documented_keys_in_order(self) -> None:
        line = json_line(entry())

        assert "\n" not in line
        assert list(json.loads(line)) == ["position", "conversationId", "type", "actor", "at", "data"]
        assert json.loads(line) == {
            "position": 7,
            "conversationId": str(CONVERSATION_ID),
            "type": "MessageSent",
            "actor": ALICE,
            "at": "2026-11-27T01:05:06.123456Z",
            "data": {"message_id": str(MESSAGE_ID), "seq": 1, "content": "hello", "parent_message_id": None},
        }

    def test_at_is_written_in_utc_whatever_the_zone_of_the_entry(self) -> None:
        paris = timezone(timedelta(hours=1))

        line = json.loads(json_line(entry(at=AT.astimezone(paris))))

        assert line["at"] == "2026-11-27T01:05:06.123456Z"

    def test_a_whole_second_keeps_its_microseconds_so_every_line_has_one_shape(self) -> None:
        line = json.loads(json_line(entry(at=AT.replace(microsecond=0))))

        assert line["at"] == "2026-11-27T01:05:06.000000Z"

    def test_a_missing_actor_is_null(self) -> None:
        assert json.loads(json_line(entry(actor=None)))["actor"] is None

    def test_non_ascii_content_is_escaped_and_reads_back_unchanged(self) -> None:
        content = "héllo 👋\nbye"

        line = json_line(entry(data={"content": content}))

        assert line.isascii()
        assert json.loads(line)["data"]["content"] == content


class TestTable:
    def test_a_header_comes_first_and_every_column_is_aligned_under_it(self) -> None:
        rows = [entry(), entry(position=12345, type="MessageRead", actor="bartholomew", data={"up_to_seq": 3})]

        header, *lines = table_lines(rows)

        assert header.split() == ["POSITION", "AT", "CONVERSATION", "TYPE", "ACTOR", "DATA"]
        for column, expected in (("AT", "2026-11-27T01:05:06.123456Z"), ("CONVERSATION", str(CONVERSATION_ID))):
            assert {line[header.index(column) :].split()[0] for line in lines} == {expected}
        assert [line[header.index("TYPE") :].split()[0] for line in lines] == ["MessageSent", "MessageRead"]
        assert [line[header.index("ACTOR") :].split()[0] for line in lines] == [ALICE, "bartholomew"]
        assert [line[header.index("DATA") :] for line in lines] == [summarise(rows[0].data), "up_to_seq=3"]

    def test_positions_are_right_aligned(self) -> None:
        _, short, long = table_lines([entry(position=7), entry(position=12345)])

        assert short.index("7 ") == long.index("12345 ") + 4

    def test_a_missing_actor_shows_as_a_dash(self) -> None:
        _, line = table_lines([entry(actor=None)])

        assert line.split()[4] == "-"

    def test_no_entries_say_so_instead_of_printing_a_bare_header(self) -> None:
        assert table_lines([]) == ["no matching events"]

    def test_no_line_ends_in_padding(self) -> None:
        assert all(line == line.rstrip() for line in table_lines([entry(data={}), entry(position=99)]))


class TestSummary:
    def test_fields_are_key_value_pairs_with_json_values_and_nones_left_out(self) -> None:
        summary = summarise({"message_id": "m1", "seq": 2, "content": 'say "hi"', "parent_message_id": None})

        assert summary == 'message_id="m1" seq=2 content="say \\"hi\\""'

    def test_multi_line_content_stays_on_one_line(self) -> None:
        summary = summarise({"content": "one\ntwo\tthree"})

        assert summary == 'content="one\\ntwo\\tthree"'

    def test_long_data_is_cut_with_an_ellipsis(self) -> None:
        summary = summarise({"content": "x" * 500})

        assert len(summary) == SUMMARY_MAX_CHARS
        assert summary.endswith("…")
        assert summary.startswith('content="xxx')

    def test_non_ascii_text_is_shown_as_written(self) -> None:
        assert summarise({"content": "héllo"}) == 'content="héllo"'


class TestArguments:
    def test_every_option_is_parsed_into_its_type(self) -> None:
        args = parse(
            "--conversation", str(CONVERSATION_ID),
            "--actor", ALICE,
            "--message", str(MESSAGE_ID),
            "--since", "2026-11-27T01:00:00+01:00",
            "--until", "2026-11-28",
            "--limit", "20",
            "--json",
        )  # fmt: skip

        assert args.conversation == CONVERSATION_ID
        assert args.actor == ALICE
        assert args.message == MESSAGE_ID
        assert args.since == datetime(2026, 11, 27, 0, 0, tzinfo=timezone.utc)
        assert args.until == datetime(2026, 11, 28, tzinfo=timezone.utc)
        assert args.limit == 20
        assert args.json is True

    def test_the_filters_become_one_query(self) -> None:
        args = parse("--conversation", str(CONVERSATION_ID), "--actor", ALICE, "--since", "2026-11-27", "--limit", "5")

        assert audit_query(args) == AuditQuery(
            conversation_id=CONVERSATION_ID,
            actor=ALICE,
            since=datetime(2026, 11, 27, tzinfo=timezone.utc),
            limit=5,
        )

    def test_no_options_mean_the_whole_log_as_a_table(self) -> None:
        args = parse()

        assert (args.conversation, args.actor, args.message, args.since, args.until, args.limit) == (None,) * 6
        assert args.json is False

    @pytest.mark.parametrize("zulu", ["2026-11-27T01:05:06Z", "2026-11-27T01:05:06"])
    def test_a_z_suffix_and_a_bare_time_both_mean_utc(self, zulu: str) -> None:
        assert parse("--since", zulu).since == datetime(2026, 11, 27, 1, 5, 6, tzinfo=timezone.utc)

    @pytest.mark.parametrize(
        ("option", "value", "complaint"),
        [
            ("--conversation", "not-an-id", "not a UUID"),
            ("--message", "1234", "not a UUID"),
            ("--since", "yesterday", "not an ISO 8601"),
            ("--until", "2026-13-01", "not an ISO 8601"),
            ("--limit", "ten", "not a whole number"),
            ("--limit", "0", "at least 1"),
        ],
    )
    def test_a_bad_value_exits_with_code_2_and_says_why_on_stderr(
        self, option: str, value: str, complaint: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        with pytest.raises(SystemExit) as exit_info:
            parse(option, value)

        err = capsys.readouterr().err
        assert exit_info.value.code == 2
        assert option in err
        assert complaint in err

    @pytest.mark.parametrize("until", ["2026-11-27T01:05:06Z", "2026-11-27T00:00:00Z"])
    def test_a_range_that_ends_before_it_starts_exits_with_code_2_before_reading_the_log(self, until: str) -> None:
        out, err = io.StringIO(), io.StringIO()
        args = parse("--since", "2026-11-27T01:05:06Z", "--until", until)

        code = run_audit(args, cast(MessagingApplication, Untouchable()), out, err)

        assert code == 2
        assert "since must be earlier than until" in err.getvalue()
        assert out.getvalue() == ""


class TestAuditQuery:
    def test_times_without_a_zone_are_refused(self) -> None:
        with pytest.raises(InvalidAuditQueryError):
            AuditQuery(since=datetime(2026, 11, 27))

    def test_a_limit_below_one_is_refused(self) -> None:
        with pytest.raises(InvalidAuditQueryError):
            AuditQuery(limit=0)

    def test_filters_combine_with_and(self) -> None:
        started, sent, edited, read, deleted = story_events()
        query = AuditQuery(actor=ALICE, message_id=MESSAGE_ID, since=sent.timestamp, until=deleted.timestamp)

        assert [query.matches(event) for event in (started, sent, edited, read, deleted)] == [
            False,  # before the range, and not about the message
            True,
            True,
            False,  # Bob's
            False,  # the range ends just before it
        ]

    def test_a_conversation_filter_keeps_only_that_conversations_events(self) -> None:
        started, *_ = story_events()

        assert AuditQuery(conversation_id=CONVERSATION_ID).matches(started)
        assert not AuditQuery(conversation_id=uuid4()).matches(started)
