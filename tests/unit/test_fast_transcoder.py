from __future__ import annotations

import uuid
from datetime import datetime, timezone
from decimal import Decimal

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
