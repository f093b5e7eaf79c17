"""The pure rules on value objects: content, type parsing and deterministic ids. No I/O."""

from __future__ import annotations

import sys
import unicodedata
from typing import Any
from uuid import UUID, uuid4

import pytest

from domain.errors import (
    InvalidContentError,
    InvalidConversationTypeError,
    InvalidInputError,
    InvalidMessageTypeError,
)
from domain.values import (
    ALLOWED_CONTROL_CHARS,
    MAX_CONTENT_CHARS,
    ConversationType,
    MessageType,
    conversation_id_for,
    message_id_for,
    normalise_content,
    parse_conversation_type,
    parse_message_type,
)


class TestNormaliseContent:
    def test_surrounding_whitespace_is_trimmed(self) -> None:
        assert normalise_content(" \t\n hello world \n\t ") == "hello world"

    def test_content_without_surrounding_whitespace_is_returned_unchanged(self) -> None:
        assert normalise_content("hello") == "hello"

    def test_newlines_and_tabs_inside_are_kept(self) -> None:
        assert normalise_content("a\nb\tc\n\nd") == "a\nb\tc\n\nd"

    def test_a_single_character_is_enough(self) -> None:
        assert normalise_content("k") == "k"

    def test_exactly_the_maximum_length_is_accepted(self) -> None:
        content = "x" * MAX_CONTENT_CHARS

        assert normalise_content(content) == content

    def test_the_length_limit_applies_after_trimming(self) -> None:
        content = "x" * MAX_CONTENT_CHARS

        assert normalise_content(f"   {content}\n\n") == content

    def test_one_character_over_the_maximum_is_refused(self) -> None:
        with pytest.raises(InvalidContentError):
            normalise_content("x" * (MAX_CONTENT_CHARS + 1))

    def test_the_limit_counts_characters_not_bytes(self) -> None:
        content = "é" * MAX_CONTENT_CHARS  # 2 bytes each in UTF-8

        assert normalise_content(content) == content

    @pytest.mark.parametrize("raw", ["", " ", "\n\t  \n"], ids=["empty", "space", "whitespace"])
    def test_empty_content_after_trimming_is_refused(self, raw: str) -> None:
        with pytest.raises(InvalidContentError):
            normalise_content(raw)

    @pytest.mark.parametrize(
        "char",
        ["\x00", "\x01", "\x07", "\x08", "\x1b", "\r", "\x7f", "\x85", "\x9f"],
        ids=lambda c: f"U+{ord(c):04X}",
    )
    def test_control_characters_inside_the_content_are_refused(self, char: str) -> None:
        with pytest.raises(InvalidContentError):
            normalise_content(f"before{char}after")

    def test_exactly_control_characters_but_tab_and_newline_and_lone_surrogates_are_refused(self) -> None:
        # Every code point, against Unicode's own categories (Cc: control, Cs: surrogate).
        for code in range(sys.maxunicode + 1):
            char = chr(code)
            category = unicodedata.category(char)
            forbidden = (category == "Cc" and char not in ALLOWED_CONTROL_CHARS) or category == "Cs"
            try:
                normalise_content(f"a{char}b")
            except InvalidContentError as error:
                assert forbidden, f"U+{code:04X} was refused"
                assert f"U+{code:04X}" in str(error)
            else:
                assert not forbidden, f"U+{code:04X} was accepted"

    @pytest.mark.parametrize("text", ["naïve café", "你好", "emoji 🎉👍", "a — b"], ids=["latin", "cjk", "emoji", "dash"])
    def test_ordinary_unicode_text_is_accepted(self, text: str) -> None:
        assert normalise_content(text) == text

    @pytest.mark.parametrize("raw", [None, 42, b"bytes", ["list"]], ids=["none", "int", "bytes", "list"])
    def test_a_non_string_is_refused(self, raw: Any) -> None:
        with pytest.raises(InvalidContentError):
            normalise_content(raw)

    def test_content_errors_are_input_errors(self) -> None:
        with pytest.raises(InvalidInputError):
            normalise_content("")


class TestParseMessageType:
    @pytest.mark.parametrize("raw", ["TEXT", "IMAGE", "FILE", "SYSTEM", "OFFER"])
    def test_each_known_type_is_accepted(self, raw: str) -> None:
        parsed = parse_message_type(raw)

        assert parsed is MessageType(raw)
        assert parsed.value == raw

    def test_exactly_the_five_known_types_exist(self) -> None:
        assert {t.value for t in MessageType} == {"TEXT", "IMAGE", "FILE", "SYSTEM", "OFFER"}

    @pytest.mark.parametrize("raw", ["text", "VIDEO", "", " TEXT", "TEXT ", "AUDIO", "Offer"])
    def test_anything_else_is_refused(self, raw: str) -> None:
        with pytest.raises(InvalidMessageTypeError):
            parse_message_type(raw)

    def test_the_refusal_names_the_allowed_types(self) -> None:
        with pytest.raises(InvalidMessageTypeError) as refused:
            parse_message_type("VIDEO")

        for allowed in ("TEXT", "IMAGE", "FILE", "SYSTEM", "OFFER"):
            assert allowed in str(refused.value)

    def test_a_message_type_error_is_an_input_error(self) -> None:
        assert issubclass(InvalidMessageTypeError, InvalidInputError)


class TestParseConversationType:
    @pytest.mark.parametrize("raw", ["DIRECT", "GROUP", "ITEM"])
    def test_each_known_type_is_accepted(self, raw: str) -> None:
        assert parse_conversation_type(raw) is ConversationType(raw)

    @pytest.mark.parametrize("raw", ["direct", "CHANNEL", "", "GROUP ", "Item"])
    def test_anything_else_is_refused(self, raw: str) -> None:
        with pytest.raises(InvalidConversationTypeError):
            parse_conversation_type(raw)

    def test_a_conversation_type_error_is_an_input_error(self) -> None:
        assert issubclass(InvalidConversationTypeError, InvalidInputError)


class TestConversationIdFor:
    def test_a_direct_conversation_id_is_the_same_every_time(self) -> None:
        first = conversation_id_for(ConversationType.DIRECT, frozenset({"alice", "bob"}), None)
        second = conversation_id_for(ConversationType.DIRECT, frozenset({"alice", "bob"}), None)

        assert isinstance(first, UUID)
        assert first == second

    def test_a_direct_conversation_id_does_not_depend_on_who_is_listed_first(self) -> None:
        # Build each pair in both insertion orders, as either user starting would. Many pairs,
        # because a frozenset iterates in insertion order only when the two hashes collide.
        for n in range(200):
            first, second = f"user-{n}", f"user-{n + 1}"
            from_first = conversation_id_for(ConversationType.DIRECT, frozenset([first, second]), None)
            from_second = conversation_id_for(ConversationType.DIRECT, frozenset([second, first]), None)

            assert from_first == from_second, (first, second)

    def test_different_pairs_get_different_direct_ids(self) -> None:
        with_bob = conversation_id_for(ConversationType.DIRECT, frozenset({"alice", "bob"}), None)
        with_carol = conversation_id_for(ConversationType.DIRECT, frozenset({"alice", "carol"}), None)

        assert with_bob != with_carol

    def test_an_item_id_is_compared_trimmed(self) -> None:
        pair = frozenset({"alice", "bob"})
        padded = conversation_id_for(ConversationType.ITEM, pair, "  item-42 ")
        assert padded == conversation_id_for(ConversationType.ITEM, pair, "item-42")

    def test_a_direct_conversation_id_ignores_an_item_id(self) -> None:
        without_item = conversation_id_for(ConversationType.DIRECT, frozenset({"alice", "bob"}), None)
        with_item = conversation_id_for(ConversationType.DIRECT, frozenset({"alice", "bob"}), "item-42")

        assert with_item == without_item

    def test_an_item_conversation_id_is_the_same_every_time_in_any_order(self) -> None:
        for n in range(200):
            buyer, seller = f"buyer-{n}", f"seller-{n}"
            from_buyer = conversation_id_for(ConversationType.ITEM, frozenset([buyer, seller]), "item-42")
            from_seller = conversation_id_for(ConversationType.ITEM, frozenset([seller, buyer]), "item-42")

            assert from_buyer == from_seller, (buyer, seller)

    def test_each_item_gets_its_own_conversation_for_the_same_pair(self) -> None:
        pair = frozenset({"buyer", "seller"})

        assert conversation_id_for(ConversationType.ITEM, pair, "item-1") != conversation_id_for(
            ConversationType.ITEM, pair, "item-2"
        )

    def test_an_item_conversation_differs_from_the_direct_one_of_the_same_pair(self) -> None:
        pair = frozenset({"buyer", "seller"})

        assert conversation_id_for(ConversationType.ITEM, pair, "item-1") != conversation_id_for(
            ConversationType.DIRECT, pair, None
        )

    def test_a_group_gets_a_new_id_every_time(self) -> None:
        members = frozenset({"alice", "bob", "carol"})

        ids = {conversation_id_for(ConversationType.GROUP, members, None) for _ in range(5)}

        assert len(ids) == 5


class TestMessageIdFor:
    def test_a_retry_with_the_same_client_id_names_the_same_message(self) -> None:
        conversation_id = uuid4()

        first = message_id_for(conversation_id, "alice", "client-1")
        retry = message_id_for(conversation_id, "alice", "client-1")

        assert isinstance(first, UUID)
        assert first == retry

    def test_another_client_id_names_another_message(self) -> None:
        conversation_id = uuid4()

        assert message_id_for(conversation_id, "alice", "client-1") != message_id_for(
            conversation_id, "alice", "client-2"
        )

    def test_the_same_client_id_from_another_sender_names_another_message(self) -> None:
        conversation_id = uuid4()

        assert message_id_for(conversation_id, "alice", "client-1") != message_id_for(
            conversation_id, "bob", "client-1"
        )

    def test_the_same_client_id_in_another_conversation_names_another_message(self) -> None:
        assert message_id_for(uuid4(), "alice", "client-1") != message_id_for(uuid4(), "alice", "client-1")

    @pytest.mark.parametrize("client_message_id", [None, ""], ids=["none", "empty"])
    def test_without_a_client_id_every_message_gets_a_new_id(self, client_message_id: str | None) -> None:
        conversation_id = uuid4()

        ids = {message_id_for(conversation_id, "alice", client_message_id) for _ in range(5)}

        assert len(ids) == 5
