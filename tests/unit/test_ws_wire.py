"""Server text frames encoded once: the bytes websockets itself would send, cached per text."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode

from interfaces.ws.wire import wire_frame


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65_535, 65_536, 200_000])
def test_a_frame_is_byte_for_byte_what_websockets_serialises_for_a_server(size: int) -> None:
    text = "é" * (size // 2) + "x" * (size % 2)  # multi-byte characters: lengths are in bytes

    assert wire_frame(text) == Frame(Opcode.TEXT, text.encode()).serialize(mask=False)


def test_the_same_text_object_is_encoded_once_and_a_new_one_anew() -> None:
    text = "".join(["hello ", "group"])  # built at run time: its own object

    first = wire_frame(text)

    assert wire_frame(text) is first
    other = "".join(["hello ", "world"])
    assert wire_frame(other) == Frame(Opcode.TEXT, b"hello world").serialize(mask=False)
