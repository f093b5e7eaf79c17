"""The load generator's WebSocket client: RFC 6455, as little of it as a bench client needs.

The generator shares the machine's two cores with the servers it measures, so its cost per
frame is taken from them. The `websockets` client spent about 60 µs of Python per frame
received (its parser, assembler and queues: two thirds of a bench worker in a group run); this
one parses a frame in a few slices of a buffer. It speaks the same protocol on the wire:
- opening handshake (HTTP/1.1 Upgrade), the server's `Sec-WebSocket-Accept` checked;
- text frames out, masked with a fresh key each (websockets' C `apply_mask`);
- text and binary frames in, fragmented or not, none larger than `max_size`;
- pings answered with pongs; the closing handshake either way.
No extensions are offered (the server's permessage-deflate is off by default, as measured).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import os
import struct
from collections.abc import Callable
from urllib.parse import urlsplit

from websockets.speedups import apply_mask  # type: ignore[attr-defined]

HANDSHAKE_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
MAX_HANDSHAKE_BYTES = 16 * 1024
OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
NORMAL_CLOSURE = 1000
NO_STATUS = 1005  # the close frame carried no code
ABNORMAL = 1006  # the connection ended without a closing handshake


class SocketClosed(Exception):
    """The connection is closed (`code` as received, or 1006 when it just ended)."""

    def __init__(self, code: int) -> None:
        super().__init__(f"connection closed with code {code}")
        self.code = code


class ProtocolViolation(Exception):
    """The server sent something a WebSocket server must not."""


async def connect(url: str, *, open_timeout: float, max_size: int) -> BenchSocket:
    """Open a client WebSocket to a ws:// URL (loopback: no TLS)."""
    parts = urlsplit(url)
    if parts.scheme != "ws" or parts.hostname is None:
        raise ValueError(f"not a ws:// URL: {url}")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(open_timeout):
        _, socket = await loop.create_connection(lambda: BenchSocket(max_size), parts.hostname, parts.port or 80)
        await socket.handshake(parts.netloc, target)
    return socket


class BenchSocket(asyncio.Protocol):
    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.close_code: int | None = None
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._upgraded = False
        self._handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._expected_accept = b""  # set when the handshake is sent
        self._messages: collections.deque[str | bytes] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._fragments: list[bytes] = []
        self._fragment_opcode = 0
        self._close_sent = False
        self._closed = asyncio.get_running_loop().create_future()
        self._writable = asyncio.Event()
        self._writable.set()
        self._on_message: Callable[[str | bytes], None] | None = None
        self._on_closed: Callable[[int, str], None] | None = None

    # ---- the application's side ------------------------------------------------------------

    async def handshake(self, host: str, target: str) -> None:
        key = base64.b64encode(os.urandom(16))
        self._expected_accept = base64.b64encode(hashlib.sha1(key + HANDSHAKE_GUID).digest())
        self._write(
            f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        await self._handshake

    async def send(self, text: str) -> None:
        if self.close_code is not None or self._close_sent:
            raise SocketClosed(self.close_code or ABNORMAL)
        await self._writable.wait()
        if self.close_code is not None:
            raise SocketClosed(self.close_code)
        self._send_frame(OP_TEXT, text.encode())

    async def recv(self) -> str | bytes:
        while not self._messages:
            if self.close_code is not None:
                raise SocketClosed(self.close_code)
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._messages.popleft()

    def listen(self, on_message: Callable[[str | bytes], None], on_closed: Callable[[int, str], None]) -> None:
        """From now on, hand each message to `on_message` as it is parsed (no task wakes up per
        frame: a quarter of a worker's time in a group run) and the end of the connection to
        `on_closed(code, reason)`, once. A message `on_message` cannot take (it raises) ends
        this connection with the exception's name as the reason."""
        self._on_message, self._on_closed = on_message, on_closed
        while self._messages and self._on_message is not None:
            self._hand_over(self._messages.popleft())
        if self.close_code is not None:
            self._report_closed("")

    async def close(self, code: int = NORMAL_CLOSURE, timeout: float = 5.0) -> None:
        """The closing handshake: send a close frame, wait for the server's (bounded)."""
        if self._transport is None:
            return
        if not self._close_sent and self.close_code is None:
            self._close_sent = True
            self._send_frame(OP_CLOSE, struct.pack("!H", code))
        try:
            await asyncio.wait_for(asyncio.shield(self._closed), timeout)
        except asyncio.TimeoutError:
            self._transport.abort()

    # ---- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            if not self._upgraded and not self._read_handshake():
                return
            self._read_frames()
        except ProtocolViolation as error:
            if not self._handshake.done():
                self._handshake.set_exception(error)
            self._end(ABNORMAL)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._handshake.done():
            self._handshake.set_exception(ConnectionError(f"connection lost during the handshake: {exc}"))
        self._end(self.close_code if self.close_code is not None else ABNORMAL)
        if not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # ---- the wire ------------------------------------------------------------------------------

    def _read_handshake(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HANDSHAKE_BYTES:
                raise ProtocolViolation("handshake response too large")
            return False
        head, self._buffer = bytes(self._buffer[:end]), self._buffer[end + 4 :]
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in header_lines)}
        if status_line.split(" ")[1:2] != ["101"]:
            raise ProtocolViolation(f"handshake refused: {status_line}")
        if headers.get("sec-websocket-accept", "").encode() != self._expected_accept:
            raise ProtocolViolation("handshake: wrong Sec-WebSocket-Accept")
        self._upgraded = True
        self._handshake.set_result(None)
        return True

    def _read_frames(self) -> None:
        buffer = self._buffer
        start = 0
        while len(buffer) - start >= 2:
            first, second = buffer[start], buffer[start + 1]
            if second & 0x80:
                raise ProtocolViolation("a server frame must not be masked")
            size = second & 0x7F
            header = 2
            if size == 126:
                if len(buffer) - start < 4:
                    break
                size = struct.unpack_from("!H", buffer, start + 2)[0]
                header = 4
            elif size == 127:
                if len(buffer) - start < 10:
                    break
                size = struct.unpack_from("!Q", buffer, start + 2)[0]
                header = 10
            if size > self.max_size:
                raise ProtocolViolation(f"frame of {size} bytes is over the limit")
            end = start + header + size
            if len(buffer) < end:
                break
            self._on_frame(bool(first & 0x80), first & 0x0F, bytes(buffer[start + header : end]))
            start = end
        if start:
            del buffer[:start]

    def _on_frame(self, fin: bool, opcode: int, payload: bytes) -> None:
        if opcode in (OP_TEXT, OP_BINARY, OP_CONTINUATION):
            if opcode != OP_CONTINUATION:
                self._fragment_opcode = opcode
                self._fragments = []
            self._fragments.append(payload)
            if not fin:
                return
            data = b"".join(self._fragments)
            self._fragments = []
            self._deliver(data.decode() if self._fragment_opcode == OP_TEXT else data)
        elif opcode == OP_PING:
            self._send_frame(OP_PONG, payload)
        elif opcode == OP_CLOSE:
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else NO_STATUS
            if not self._close_sent:  # echo the code, then the server closes the TCP connection
                self._close_sent = True
                self._send_frame(OP_CLOSE, payload[:2])
            self._end(code)
        elif opcode != OP_PONG:
            raise ProtocolViolation(f"unknown opcode {opcode}")

    def _deliver(self, message: str | bytes) -> None:
        if self._on_message is not None:
            self._hand_over(message)
            return
        self._messages.append(message)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _hand_over(self, message: str | bytes) -> None:
        assert self._on_message is not None
        try:
            self._on_message(message)
        except Exception as error:  # this client cannot read it: it ends, and says why
            self._on_message = None
            self._end(ABNORMAL, f"client {type(error).__name__}")
            if self._transport is not None:
                self._transport.abort()

    def _end(self, code: int, reason: str = "") -> None:
        if self.close_code is None:
            self.close_code = code
            self._report_closed(reason)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        self._writable.set()  # a sender waiting on flow control finds the socket closed

    def _report_closed(self, reason: str) -> None:
        on_closed, self._on_closed = self._on_closed, None
        if on_closed is not None:
            on_closed(self.close_code if self.close_code is not None else ABNORMAL, reason)

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        size = len(payload)
        if size < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
        elif size < 1 << 16:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
        mask = os.urandom(4)
        self._write(header + mask + apply_mask(payload, mask))

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)
