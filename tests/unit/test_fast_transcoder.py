from __future__ import annotations

import uuid
from datetime import datetime, timezone
from decimal import Decimal
from enum import IntEnum

import pytest
from eventsourcing.application import Application

from infrastructure.transcoder import FastJSONTranscoder


@pytest.fixture
def transcoders() -> tuple[FastJSONTranscoder, object]:
    fast = FastJSONTranscoder()
    standard = Application().mapper.transcoder
    for transcoding in standard.types.values():  # the same transcodings the application registers
        fast.register(transcoding)
    return fast, standard


class TestFastJSONTranscoder:
    def test_it_decodes_what_the_standard_transcoder_encodes(self, transcoders) -> None:
        fast, standard = transcoders
        state = {
            "timestamp": datetime(2026, 11, 27, 1, 2, 3, 456789, tzinfo=timezone.utc),
            "message_id": uuid.uuid4(),
            "parent_message_id": None,
            "participant_ids": ["alice", "bob"],
            "nested": {"amount": Decimal("12.50"), "ids": [uuid.uuid4()]},
            "content": "Größe 42 — 🚲\nline two",
            "seq": 7,
        }
        encoded = standard.encode(state)
        assert fast.encode(state) == encoded
        assert fast.decode(encoded) == standard.decode(encoded) == state

    def test_a_row_orjson_refuses_still_decodes_through_the_standard_path(self, transcoders) -> None:
        fast, standard = transcoders
        encoded = b'{"content": "caf\\ud800"}'  # a lone surrogate escape: valid JSON, refused by orjson
        assert fast.decode(encoded) == standard.decode(encoded)

    def test_it_encodes_the_bytes_the_standard_transcoder_writes_for_every_code_point(self, transcoders) -> None:
        fast, standard = transcoders
        every_character = "".join(chr(code) for code in range(0x110000) if not 0xD800 <= code <= 0xDFFF)
        state = {"content": every_character, "ids": (uuid.uuid4(), [uuid.uuid4()]), "seq": 2**63 - 1, "ok": True}

        assert fast.encode(state) == standard.encode(state)

    @pytest.mark.parametrize(
        "value",
        [1.1, float("nan"), 2**64, {1: "an int key"}, IntEnum("Level", "LOW HIGH").HIGH, type("Tag", (str,), {})("a str")],
        ids=["float", "nan", "int beyond 64 bits", "int key", "int subclass", "str subclass"],
    )
    def test_values_whose_json_could_differ_are_written_by_the_standard_encoder(self, transcoders, value) -> None:
        fast, standard = transcoders
        state = {"value": value, "message_id": uuid.uuid4()}

        assert fast.encode(state) == standard.encode(state)

    def test_a_lone_surrogate_fails_as_the_standard_encoder_fails(self, transcoders) -> None:
        fast, standard = transcoders
        with pytest.raises(UnicodeEncodeError):
            standard.encode({"content": "caf\ud800"})
        with pytest.raises(UnicodeEncodeError):
            fast.encode({"content": "caf\ud800"})
