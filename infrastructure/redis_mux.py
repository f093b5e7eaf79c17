"""One pipelined Redis connection shared by every coroutine of an event loop, for the hot path.

redis-py's asyncio client checks a connection out of a pool for each command and wraps it in
retry and timeout machinery: about 300 µs of event-loop time per call on this machine, which
made Redis the largest cost of a chat message. Replies on one connection arrive in the order
the commands were written, so a FIFO of futures is all the bookkeeping a call needs (about
16 µs per call, measured side by side; docs/performance.md). hiredis parses the replies.

Failure model: when the connection drops, every pending call fails with redis-py's
`ConnectionError` and the next call connects anew (a restarted Redis costs the calls that were
in flight, never a stuck client). A reply that does not come within `timeout_s` means the link
is wedged: the connection is dropped, which fails every call waiting on it.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import time
from typing import Any

import hiredis
from redis.asyncio.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Arg = str | bytes | int | float

CALL_TIMEOUT_S = 5.0  # a healthy Redis answers in well under a millisecond
CONNECT_TIMEOUT_S = 2.0
WATCHDOG_EVERY_S = 0.5


class _Link(asyncio.Protocol):
    """One socket: writes commands, resolves the oldest waiting future with each reply."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            if not self.waiting:  # a reply after the link failed its callers: nobody wants it
                continue
            future, _ = self.waiting.popleft()
            if future.done():
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(ResponseError(str(reply)))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(f"connection to Redis lost: {exc or 'closed by the server'}"))

    def send(self, args: tuple[Arg, ...]) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.lost or self.transport is None or self.transport.is_closing():
            future.set_exception(RedisConnectionError("connection to Redis lost"))
            return future
        self.waiting.append((future, time.monotonic()))
        self.transport.write(hiredis.pack_command(args))  # C: ~1.6 µs against ~6 µs in Python
        return future

    def fail(self, error: Exception) -> None:
        self.lost = True
        while self.waiting:
            future, _ = self.waiting.popleft()
            if not future.done():
                future.set_exception(error)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()

    def oldest_wait(self) -> float:
        return time.monotonic() - self.waiting[0][1] if self.waiting else 0.0


class MuxScript:
    """A Lua script: sent whole (EVAL) once per connection, then called by its SHA1.

    Once per connection rather than on a NOSCRIPT reply: the retry a NOSCRIPT calls for would
    reach Redis after commands issued meanwhile, and a caller may rely on the order of what it
    issued (`RedisMux.send`). A NOSCRIPT still retries, for a SCRIPT FLUSH on a live connection."""

    def __init__(self, mux: RedisMux, source: str) -> None:
        self.mux = mux
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self._loaded_on: _Link | None = None

    async def __call__(self, keys: list[Arg] = (), args: list[Arg] = ()) -> Any:  # type: ignore[assignment]
        return await self.issue(keys, args)

    def issue(self, keys: list[Arg], args: list[Arg]) -> asyncio.Future[Any]:
        """The call written now (when connected, see `RedisMux.send`); its reply comes in the
        returned future."""
        link = self.mux._live_link()
        if link is None or link is not self._loaded_on:
            self._loaded_on = link  # Redis runs it before anything sent after it on this link
            return self.mux.send("EVAL", self.source, len(keys), *keys, *args)
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        by_sha = self.mux.send("EVALSHA", self.sha, len(keys), *keys, *args)

        def answered(call: asyncio.Future[Any]) -> None:
            error = None if call.cancelled() else call.exception()
            if isinstance(error, ResponseError) and str(error).startswith("NOSCRIPT"):
                _pass_on(self.mux.send("EVAL", self.source, len(keys), *keys, *args), reply)
            else:
                _pass_on(call, reply)

        by_sha.add_done_callback(answered)
        return reply


def _pass_on(call: asyncio.Future[Any], into: asyncio.Future[Any]) -> None:
    """Settle `into` as `call` settles."""

    def settle(done: asyncio.Future[Any]) -> None:
        if into.done():
            return
        if done.cancelled():
            into.cancel()
        elif (error := done.exception()) is not None:
            into.set_exception(error)
        else:
            into.set_result(done.result())

    call.add_done_callback(settle)


class RedisMux:
    def __init__(self, url: str, *, timeout_s: float = CALL_TIMEOUT_S, connect_timeout_s: float = CONNECT_TIMEOUT_S):
        self.params = parse_url(url)
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._link: _Link | None = None
        self._connecting: asyncio.Lock | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._closed = False

    # ---- calls ---------------------------------------------------------------------------

    async def execute(self, *args: Arg) -> Any:
        link = self._link if self._link is not None and not self._link.lost else await self._connect()
        return await link.send(args)

    def _live_link(self) -> _Link | None:
        link = self._link
        return link if link is not None and not link.lost else None

    def send(self, *args: Arg) -> asyncio.Future[Any]:
        """`execute` without a coroutine: on a live connection the command is written before
        this returns, so it reaches Redis before any command issued after it on this client
        (a caller may answer its own client without waiting for the reply). Otherwise the
        call waits for the connection like any other."""
        link = self._live_link()
        return link.send(args) if link is not None else asyncio.ensure_future(self.execute(*args))

    def register_script(self, source: str) -> MuxScript:
        return MuxScript(self, source)

    async def get(self, key: str) -> bytes | None:
        return await self.execute("GET", key)  # type: ignore[no-any-return]

    async def set(self, key: str, value: Arg, *, ex: int | None = None) -> None:
        await (self.execute("SET", key, value, "EX", ex) if ex is not None else self.execute("SET", key, value))

    async def zrem(self, key: str, *members: Arg) -> int:
        return int(await self.execute("ZREM", key, *members))

    async def ping(self) -> bool:
        return bool(await self.execute("PING") == b"PONG")

    # ---- the connection ------------------------------------------------------------------

    async def _connect(self) -> _Link:
        if self._closed:
            raise RedisConnectionError("the Redis client is closed")
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:  # concurrent callers share one new connection
            if self._link is not None and not self._link.lost:
                return self._link
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(self.connect_timeout_s):
                    if "path" in self.params:
                        _, link = await loop.create_unix_connection(_Link, self.params["path"])
                    else:
                        _, link = await loop.create_connection(
                            _Link, self.params.get("host", "localhost"), self.params.get("port", 6379)
                        )
                    await self._handshake(link)
            except (OSError, asyncio.TimeoutError, ResponseError) as error:
                raise RedisConnectionError(f"cannot connect to Redis: {error}") from error
            self._link = link
            if self._watchdog is None or self._watchdog.done():
                self._watchdog = asyncio.create_task(self._watch(), name="redis-mux-watchdog")
            return link

    async def _handshake(self, link: _Link) -> None:
        password, username, db = self.params.get("password"), self.params.get("username"), self.params.get("db")
        replies = []
        if password:
            replies.append(link.send(("AUTH", username, password) if username else ("AUTH", password)))
        if db:
            replies.append(link.send(("SELECT", db)))
        await asyncio.gather(*replies)  # an error reply raises ResponseError

    async def _watch(self) -> None:
        """Drop a link whose oldest call waited past the timeout: FIFO replies cannot skip it."""
        while not self._closed:
            await asyncio.sleep(WATCHDOG_EVERY_S)
            link = self._link
            if link is not None and not link.lost and link.oldest_wait() > self.timeout_s:
                link.fail(RedisTimeoutError(f"Redis did not answer within {self.timeout_s} s"))

    async def aclose(self) -> None:
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._link is not None:
            self._link.fail(RedisConnectionError("the Redis client is closed"))
            self._link = None
