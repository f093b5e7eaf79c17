"""Parsing graphql-transport-ws client messages: what is accepted, and what closes with 4400."""

from __future__ import annotations

import json

import pytest

from interfaces.graphql_ws.protocol import (
    BAD_REQUEST,
    MAX_CLOSE_REASON_BYTES,
    MAX_MESSAGE_CHARS,
    MAX_OPERATION_ID_CHARS,
    Complete,
    ConnectionInit,
    Ping,
    Pong,
    ProtocolViolation,
    Subscribe,
    close_reason,
    next_message,
    parse_message,
    pong,
)


class TestAcceptedMessages:
    def test_connection_init_without_payload_reads_as_an_empty_payload(self) -> None:
        assert parse_message('{"type": "connection_init"}') == ConnectionInit({})
        assert parse_message('{"type": "connection_init", "payload": null}') == ConnectionInit({})
        assert parse_message('{"type": "connection_init", "payload": {"token": "t"}}') == ConnectionInit({"token": "t"})

    def test_ping_and_pong_keep_their_optional_payload(self) -> None:
        assert parse_message('{"type": "ping"}') == Ping(None)
        assert parse_message('{"type": "pong", "payload": {"at": 1}}') == Pong({"at": 1})

    def test_subscribe_carries_query_operation_name_and_variables(self) -> None:
        raw = {
            "id": "abc", "type": "subscribe",
            "payload": {"query": "subscription { unreadCountUpdated { count } }", "operationName": None,
                        "variables": {"a": 1}, "extensions": {}},
        }
        assert parse_message(json.dumps(raw)) == Subscribe(
            "abc", "subscription { unreadCountUpdated { count } }", None, {"a": 1}
        )

    def test_complete_names_its_operation(self) -> None:
        assert parse_message('{"type": "complete", "id": "abc"}') == Complete("abc")


class TestRejectedMessages:
    @pytest.mark.parametrize(
        "raw",
        [
            "{",
            '"connection_init"',
            '{"payload": {}}',
            '{"type": "connection_ack"}',
            '{"type": "next", "id": "1", "payload": {}}',
            '{"type": "error", "id": "1", "payload": []}',
            '{"type": "connection_init", "payload": "token"}',
            '{"type": "subscribe", "id": "", "payload": {"query": "{ a }"}}',
            '{"type": "subscribe", "id": 7, "payload": {"query": "{ a }"}}',
            '{"type": "subscribe", "id": "1"}',
            '{"type": "subscribe", "id": "1", "payload": {"query": 5}}',
            '{"type": "subscribe", "id": "1", "payload": {"query": "{ a }", "operationName": 3}}',
            '{"type": "subscribe", "id": "1", "payload": {"query": "{ a }", "extensions": "x"}}',
            '{"type": "complete"}',
        ],
    )
    def test_a_malformed_or_unexpected_message_is_a_4400_violation(self, raw: str) -> None:
        with pytest.raises(ProtocolViolation) as violation:
            parse_message(raw)
        assert violation.value.code == BAD_REQUEST
        assert violation.value.reason.startswith("Invalid message")

    def test_an_oversize_message_is_refused_before_it_is_parsed(self) -> None:
        with pytest.raises(ProtocolViolation):
            parse_message(" " * (MAX_MESSAGE_CHARS + 1))

    def test_an_overlong_operation_id_is_refused(self) -> None:
        raw = {"type": "complete", "id": "x" * (MAX_OPERATION_ID_CHARS + 1)}
        with pytest.raises(ProtocolViolation):
            parse_message(json.dumps(raw))


class TestServerMessages:
    def test_next_and_pong_have_the_spec_shape(self) -> None:
        assert json.loads(next_message("1", {"data": {"a": 1}})) == {"id": "1", "type": "next", "payload": {"data": {"a": 1}}}
        assert json.loads(pong()) == {"type": "pong"}
        assert json.loads(pong({"n": 1})) == {"type": "pong", "payload": {"n": 1}}

    def test_a_close_reason_is_cut_to_the_frame_limit_without_splitting_a_character(self) -> None:
        reason = close_reason("Subscriber for " + "é" * 100 + " already exists")
        assert len(reason.encode()) <= MAX_CLOSE_REASON_BYTES
        assert reason.startswith("Subscriber for é")
