"""Opaque Relay cursors: they round-trip exactly, and anything not made by the server is refused
with one error that maps to BAD_USER_INPUT. No I/O."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID, uuid4

import pytest

from domain.errors import InvalidInputError
from interfaces.errors import error_code
from projections.cursors import (
    MAX_BIGINT,
    MAX_CURSOR_CHARS,
    InvalidCursorError,
    decode_conversation_cursor,
    decode_message_cursor,
    decode_search_cursor,
    encode_conversation_cursor,
    encode_message_cursor,
    encode_search_cursor,
)

DECODERS: list[Callable[[str], Any]] = [decode_conversation_cursor, decode_message_cursor, decode_search_cursor]


def forge(payload: Any) -> str:
    """A cursor built by hand the way the server builds them, around any payload."""
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class TestRoundTrip:
    def test_a_conversation_cursor_gives_back_the_exact_activity_time_and_id(self) -> None:
        moment = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=timezone.utc)
        conversation_id = uuid4()
        assert decode_conversation_cursor(encode_conversation_cursor(moment, conversation_id)) == (
            moment,
            conversation_id,
        )

    def test_a_time_in_another_zone_decodes_to_the_same_instant(self) -> None:
        moment = datetime(2031, 5, 6, 9, 8, 9, 1, tzinfo=timezone(timedelta(hours=2)))
        decoded, _ = decode_conversation_cursor(encode_conversation_cursor(moment, uuid4()))
        assert decoded == moment
        assert decoded.tzinfo == timezone.utc

    @pytest.mark.parametrize("seq", [0, 1, 250, MAX_BIGINT])
    def test_a_message_cursor_gives_back_its_seq(self, seq: int) -> None:
        assert decode_message_cursor(encode_message_cursor(seq)) == seq

    @pytest.mark.parametrize("position", [1, 123_456_789, MAX_BIGINT])
    def test_a_search_cursor_gives_back_its_position(self, position: int) -> None:
        assert decode_search_cursor(encode_search_cursor(position)) == position

    def test_cursors_are_url_safe_and_unpadded(self) -> None:
        cursor = encode_conversation_cursor(datetime.now(timezone.utc), UUID(int=2**128 - 1))
        assert set(cursor) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        assert len(cursor) < MAX_CURSOR_CHARS


class TestRefusedCursors:
    @pytest.mark.parametrize(
        "cursor",
        [
            pytest.param("", id="empty"),
            pytest.param("not a cursor!", id="not-base64url"),
            pytest.param("bW9v", id="base64-of-plain-text"),
            pytest.param(forge({"seq": 5}), id="an-object"),
            pytest.param(forge([2, "msg", 5]), id="unknown-version"),
            pytest.param(forge([1, "msg"]), id="missing-key"),
            pytest.param(forge([1, "msg", 5, 6]), id="extra-key"),
            pytest.param(forge([1, "msg", "5"]), id="seq-as-text"),
            pytest.param(forge([1, "msg", 5.0]), id="seq-as-float"),
            pytest.param(forge([1, "msg", True]), id="seq-as-boolean"),
            pytest.param(forge([1, "msg", -1]), id="negative-seq"),
            pytest.param(forge([1, "msg", MAX_BIGINT + 1]), id="seq-beyond-bigint"),
            pytest.param(forge([True, "msg", 5]), id="version-as-boolean"),
            pytest.param(encode_message_cursor(5) + "==", id="padded"),
            pytest.param(encode_message_cursor(5).replace("_", "/").replace("-", "+") + "+", id="standard-alphabet"),
            pytest.param(base64.urlsafe_b64encode(b'[1, "msg", 5]').decode().rstrip("="), id="non-canonical-json"),
            pytest.param(base64.urlsafe_b64encode(b"\xff\xfe").decode().rstrip("="), id="not-utf8"),
            pytest.param("A" * (MAX_CURSOR_CHARS + 4), id="oversize"),
        ],
    )
    def test_a_forged_or_damaged_message_cursor_is_refused(self, cursor: str) -> None:
        with pytest.raises(InvalidCursorError):
            decode_message_cursor(cursor)

    @pytest.mark.parametrize(
        "cursor",
        [
            pytest.param(forge([1, "conv", 0, "not-a-uuid"]), id="bad-uuid"),
            pytest.param(forge([1, "conv", 0, str(uuid4())]), id="uuid-not-in-canonical-hex"),
            pytest.param(forge([1, "conv", 10**18, uuid4().hex]), id="time-beyond-year-9999"),
            pytest.param(forge([1, "conv", "2031-01-01", uuid4().hex]), id="time-as-text"),
            pytest.param(forge([1, "conv", MAX_BIGINT + 1, uuid4().hex]), id="time-beyond-bigint"),
            pytest.param(forge([1, "conv", 0]), id="missing-id"),
        ],
    )
    def test_a_forged_or_damaged_conversation_cursor_is_refused(self, cursor: str) -> None:
        with pytest.raises(InvalidCursorError):
            decode_conversation_cursor(cursor)

    def test_a_cursor_of_one_list_is_refused_by_another(self) -> None:
        message_cursor = encode_message_cursor(42)
        conversation_cursor = encode_conversation_cursor(datetime.now(timezone.utc), uuid4())
        with pytest.raises(InvalidCursorError):
            decode_search_cursor(message_cursor)
        with pytest.raises(InvalidCursorError):
            decode_conversation_cursor(message_cursor)
        with pytest.raises(InvalidCursorError):
            decode_message_cursor(conversation_cursor)

    @pytest.mark.parametrize("decode", DECODERS)
    def test_a_non_string_is_refused(self, decode: Callable[[Any], Any]) -> None:
        with pytest.raises(InvalidCursorError):
            decode(12345)

    def test_a_refused_cursor_is_the_callers_mistake(self) -> None:
        assert issubclass(InvalidCursorError, InvalidInputError)
        assert error_code(InvalidCursorError("invalid cursor")) == "BAD_USER_INPUT"
