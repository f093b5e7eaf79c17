"""A broadcaster backend over Redis pub/sub that confirms subscriptions, survives Redis restarts
and bounds its memory.

Use it as `broadcaster.Broadcast(backend=ResilientRedisBackend(url))` with a `redis://`,
`rediss://` or `unix://` URL. It replaces broadcaster 0.3.1's `RedisBackend`, which with
redis-py 8 delivers nothing (it starts listening before SUBSCRIBE completes), dies silently on a
connection error and queues without bound.

Redis pub/sub is at-most-once: whatever is published while our connection is down, or while the
queue is full, is gone. This backend cannot recover those messages; it says that it lost some by
calling every reconnect listener, and the application re-reads what it missed from its database.

Shape: the pub/sub connection is an asyncio protocol whose hiredis parser hands each message to
the queue as its bytes arrive (redis-py's `PubSub.get_message` cost a task switch and its
parsing machinery per message: 12% of an api node's event loop in the chat bench). One reader
task owns the connection's life (subscribing, liveness probes, reconnecting); one notifier task
calls the listeners, so a slow listener never stops the reading. Publishing uses a separate,
small connection pool.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlparse

import hiredis
import redis.asyncio as aioredis
from broadcaster import BroadcastBackend, Event
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)

ReconnectListener = Callable[[], Awaitable[None]]

SUPPORTED_SCHEMES = ("redis", "rediss", "unix")

# At ~22k deliveries/s (one redis-py subscriber, measured) this is about half a second of
# backlog, ~5 MB of 500-byte messages. A consumer further behind than that is better served by
# re-reading from the database than by an ever-growing queue, so we drop and signal a gap.
QUEUE_CAPACITY = 10_000
# A burst of drops or a flapping connection must not turn into a storm of catch-up reads: at
# most one listener round per interval; signals arriving meanwhile coalesce into the next round.
GAP_NOTIFY_INTERVAL_S = 1.0
# First retry soon (a network blip or a fast Redis restart heals in well under a second), then
# back off so hundreds of nodes do not hammer a Redis that is still starting; 5 s caps how long
# the application stays without live updates after Redis is back.
RECONNECT_BACKOFF_INITIAL_S = 0.1
RECONNECT_BACKOFF_MAX_S = 5.0
# Longer than a Redis restart plus a few backoff steps; a caller waiting longer for a live feed
# is better served by an error it can report.
SUBSCRIBE_CONFIRM_TIMEOUT_S = 10.0
# A Redis round trip is ~150 µs here; 2 s means the server or the network is not answering.
CONNECT_TIMEOUT_S = 2.0
COMMAND_TIMEOUT_S = 2.0
# Publishes are short round trips: 16 in flight keep Redis busy, and the cap keeps a publish
# burst during a slow Redis from opening thousands of sockets (ulimit -n is 20,000 here).
PUBLISH_POOL_SIZE = 16
# The reader wakes at least this often to check liveness even when nothing arrives.
READ_POLL_S = 1.0
# A quiet connection is probed with PING so a half-open TCP connection (host gone, no RST) is
# noticed within seconds rather than after the kernel's two-hour keepalive.
IDLE_PING_INTERVAL_S = 5.0
PONG_TIMEOUT_S = 5.0

# Errors that mean "the connection is unusable", as opposed to a bug in our code.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, OSError)


class RedisUnavailableError(ConnectionError):
    """Redis could not be reached or did not answer in time; nothing was published/subscribed."""


class _PubSubLink(asyncio.Protocol):
    """One pub/sub connection. Every reply goes to `on_reply` as soon as it is parsed; `closed`
    is done once the connection is gone (with the reason as its exception, if any)."""

    def __init__(self, on_reply: Callable[[_PubSubLink, Any], None]) -> None:
        loop = asyncio.get_running_loop()
        # Our publishers send UTF-8 JSON; a foreign publisher's bad bytes must not kill the reader.
        self.reader = hiredis.Reader(encoding="utf-8", errors="replace")
        self.on_reply = on_reply
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = loop.create_future()
        self.last_heard = loop.time()
        self._clock = loop.time
        self._handshake: list[asyncio.Future[Any]] = []  # AUTH and SELECT, answered in order

    @property
    def lost(self) -> bool:
        return self.closed.done()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.last_heard = self._clock()
        self.reader.feed(data)
        while not self.closed.done() and (reply := self.reader.gets()) is not False:
            if self._handshake:
                waiter = self._handshake.pop(0)
                if not waiter.done():
                    waiter.set_result(reply)
            else:
                self.on_reply(self, reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(RedisConnectionError(f"pub/sub connection lost: {exc or 'closed by the server'}"))

    def send(self, *args: str | int) -> None:
        if self.transport is None or self.transport.is_closing():
            self._end(RedisConnectionError("the pub/sub connection is closed"))
            return
        self.transport.write(hiredis.pack_command(args))

    async def call(self, *args: str | int) -> Any:
        """A command answered before subscribing (AUTH, SELECT)."""
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._handshake.append(waiter)
        self.send(*args)
        return await waiter

    def fail(self, error: Exception) -> None:
        self._end(error)
        if self.transport is not None:
            self.transport.abort()

    def _end(self, error: Exception) -> None:
        for waiter in self._handshake:
            if not waiter.done():
                waiter.set_exception(error)
        self._handshake.clear()
        if not self.closed.done():
            self.closed.set_exception(error)
            self.closed.exception()  # retrieved: nobody may be waiting when it fails


class ResilientRedisBackend(BroadcastBackend):
    def __init__(self, url: str, *, queue_capacity: int = QUEUE_CAPACITY) -> None:
        # Deliberately not calling BroadcastBackend.__init__: it only raises NotImplementedError.
        scheme = urlparse(url).scheme
        if scheme not in SUPPORTED_SCHEMES:
            raise ValueError(f"unsupported Redis URL scheme in {url!r}; use one of {SUPPORTED_SCHEMES}")
        self._url = url
        self._params = parse_url(url)
        self._ssl = ssl.create_default_context() if scheme == "rediss" else None
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=queue_capacity)
        self._channels: set[str] = set()
        self._confirm_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._listeners: list[ReconnectListener] = []
        self._gap = asyncio.Event()
        self._session: _PubSubLink | None = None
        self._unconfirmed: set[str] = set()  # channels the session subscribed and Redis has not confirmed
        self._resumed = False  # the session replaces a lost one: its readiness means a gap
        self._pub_client: aioredis.Redis | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._connected = False
        self._session_was_ready = False  # did the last session get every channel confirmed?
        self._reconnects = 0
        self._dropped = 0

    # -- state ---------------------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        """True while the pub/sub connection is up and every channel's subscription is confirmed."""
        return self._connected

    @property
    def reconnects(self) -> int:
        """How many times the pub/sub connection was lost and re-established."""
        return self._reconnects

    @property
    def dropped(self) -> int:
        """How many received messages were discarded because the queue was full."""
        return self._dropped

    def add_reconnect_listener(self, listener: ReconnectListener) -> None:
        """Call `await listener()` after messages may have been lost: after a reconnect (once
        every channel is subscribed again) and after the full queue dropped messages.

        Rounds are at most one per GAP_NOTIFY_INTERVAL_S; an exception in one listener is logged
        and does not affect the others.
        """
        self._listeners.append(listener)

    def remove_reconnect_listener(self, listener: ReconnectListener) -> None:
        self._listeners.remove(listener)

    # -- BroadcastBackend ----------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the connections and start reading. Raises RedisUnavailableError if Redis cannot be
        reached now: failing at startup is clearer than a node that silently has no live feed."""
        if self._tasks:
            raise RuntimeError("already connected")
        # Publishing may retry once: after a Redis restart every pooled connection is stale, and a
        # PUBLISH on a fresh one is exactly what the caller wanted (no message can be lost by it).
        pool = aioredis.BlockingConnectionPool.from_url(
            self._url,
            max_connections=PUBLISH_POOL_SIZE,
            timeout=COMMAND_TIMEOUT_S,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            socket_timeout=COMMAND_TIMEOUT_S,
            retry=Retry(NoBackoff(), 1),
        )
        self._pub_client = aioredis.Redis(connection_pool=pool)
        try:
            first = await self._open_session()
        except BaseException as error:
            await self._close_clients()
            if isinstance(error, CONNECTION_ERRORS):
                raise RedisUnavailableError(f"cannot connect to Redis: {error}") from error
            raise
        self._connected = True
        self._tasks = [
            asyncio.create_task(self._read_forever(first), name="redis-broadcast-reader"),
            asyncio.create_task(self._notify_forever(), name="redis-broadcast-notifier"),
        ]

    async def disconnect(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self._connected = False
        self._channels.clear()  # a later connect() starts with no subscriptions, like a new backend
        for waiters in self._confirm_waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(RedisUnavailableError("backend disconnected"))
        await self._close_clients()

    async def subscribe(self, channel: str) -> None:
        """Return once Redis has confirmed the subscription, so a message published after this
        returns is delivered. While Redis is down this waits for the reconnect; it raises
        RedisUnavailableError if no confirmation comes within SUBSCRIBE_CONFIRM_TIMEOUT_S."""
        if not self._tasks:
            raise RuntimeError("connect() first")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._confirm_waiters.setdefault(channel, []).append(waiter)
        # Recorded before sending: a session that starts from now on subscribes it too.
        self._channels.add(channel)
        try:
            await self._send(channel, "subscribe")
            await asyncio.wait_for(waiter, SUBSCRIBE_CONFIRM_TIMEOUT_S)
        except asyncio.TimeoutError:
            await self.unsubscribe(channel)
            raise RedisUnavailableError(
                f"Redis did not confirm SUBSCRIBE {channel!r} within {SUBSCRIBE_CONFIRM_TIMEOUT_S} s"
            ) from None
        except BaseException:  # cancelled, or disconnect() failed the waiter
            await self.unsubscribe(channel)
            raise
        finally:
            waiters = self._confirm_waiters.get(channel, [])
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters:
                self._confirm_waiters.pop(channel, None)

    async def unsubscribe(self, channel: str) -> None:
        """Stop delivering `channel` at once. Never raises for a connection problem: a session
        that is down has no subscription to remove, and the next one will not subscribe it."""
        self._channels.discard(channel)
        await self._send(channel, "unsubscribe")

    async def publish(self, channel: str, message: Any) -> None:
        """PUBLISH once, without retrying. Raises RedisUnavailableError while Redis is down or
        too slow: only the caller knows whether to retry, queue, or report the failure."""
        if self._pub_client is None:
            raise RuntimeError("connect() first")
        try:
            await self._pub_client.publish(channel, message)
        except CONNECTION_ERRORS as error:
            raise RedisUnavailableError(f"cannot publish to {channel!r}: {error}") from error

    async def next_published(self) -> Event:
        """The next received message, in Redis's order. Some may be missing; every such gap was
        announced to the reconnect listeners."""
        return await self._queue.get()

    # -- the reader ----------------------------------------------------------------------------

    async def _open_session(self) -> _PubSubLink:
        loop = asyncio.get_running_loop()
        params = self._params
        link: _PubSubLink | None = None
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                if "path" in params:
                    _, link = await loop.create_unix_connection(lambda: _PubSubLink(self._on_reply), params["path"])
                else:
                    _, link = await loop.create_connection(
                        lambda: _PubSubLink(self._on_reply),
                        params.get("host", "localhost"),
                        params.get("port", 6379),
                        ssl=self._ssl,
                    )
                await self._handshake(link)
        except BaseException as error:
            if link is not None:
                link.fail(RedisConnectionError("the pub/sub connection could not be set up"))
            if isinstance(error, TimeoutError):
                raise RedisTimeoutError(f"no pub/sub connection within {CONNECT_TIMEOUT_S} s") from error
            raise
        return link

    async def _handshake(self, link: _PubSubLink) -> None:
        password, username, db = self._params.get("password"), self._params.get("username"), self._params.get("db")
        commands = [("AUTH", username, password) if username else ("AUTH", password)] if password else []
        if db:
            commands.append(("SELECT", db))
        for command in commands:
            reply = await link.call(*command)
            if isinstance(reply, hiredis.ReplyError):
                raise RedisConnectionError(f"Redis refused the pub/sub connection: {reply}")

    async def _read_forever(self, session: _PubSubLink | None) -> None:
        """Watch the connection until cancelled; every lost one is replaced, never given up on."""
        failures = 0
        resumed = False
        while True:
            if session is None:
                try:
                    session = await self._open_session()
                except CONNECTION_ERRORS as error:
                    failures += 1
                    delay = self._backoff(failures)
                    log.warning("Redis pub/sub reconnect failed (%s); retrying in %.2f s", error, delay)
                    await asyncio.sleep(delay)
                    continue
            try:
                await self._watch_session(session, resumed)
            except CONNECTION_ERRORS as error:
                log.warning("Redis pub/sub connection lost: %s", error)
            except Exception:
                # Not a connection error, so possibly our bug: log it loudly, but keep the feed.
                log.exception("Redis pub/sub reader failed; reconnecting")
            finally:
                self._connected = False
                self._session = None
                session.fail(RedisConnectionError("replaced"))
            session = None
            resumed = True
            failures = 0 if self._session_was_ready else failures + 1
            await asyncio.sleep(self._backoff(failures))

    async def _watch_session(self, session: _PubSubLink, resumed: bool) -> None:
        """Subscribe the session to every channel, then probe it while replies flow in through
        `_on_reply`; returns only by raising, once the connection is gone or silent."""
        self._session_was_ready = False
        self._resumed = resumed
        self._session = session  # from here on, subscribe() sends on this connection itself
        self._unconfirmed = set(self._channels)
        if self._unconfirmed:
            session.send("SUBSCRIBE", *self._unconfirmed)
        else:
            self._on_session_ready()
        loop = asyncio.get_running_loop()
        last_ping = loop.time()
        while True:
            done, _ = await asyncio.wait([session.closed], timeout=READ_POLL_S)
            if done:
                session.closed.result()  # raises why it closed
                raise RedisConnectionError("the pub/sub connection closed")
            now = loop.time()
            silent_for = now - session.last_heard
            if silent_for > IDLE_PING_INTERVAL_S + PONG_TIMEOUT_S:
                raise RedisTimeoutError(f"no reply to PING for {silent_for:.1f} s: the link is dead")
            if silent_for > IDLE_PING_INTERVAL_S and now - last_ping > IDLE_PING_INTERVAL_S:
                last_ping = now
                session.send("PING")  # any reply, the pong included, refreshes last_heard

    def _on_reply(self, session: _PubSubLink, reply: Any) -> None:
        if isinstance(reply, hiredis.ReplyError):
            session.fail(RedisConnectionError(f"Redis answered the pub/sub connection with an error: {reply}"))
            return
        kind = reply[0]
        if kind == "message":
            self._deliver(reply[1], reply[2])
        elif kind == "subscribe" and session is self._session:
            channel = reply[1]
            self._confirm(channel)
            if self._unconfirmed:
                self._unconfirmed.discard(channel)
                if not self._unconfirmed:
                    self._on_session_ready()

    def _on_session_ready(self) -> None:
        self._connected = True
        self._session_was_ready = True
        if self._resumed:
            self._reconnects += 1
            self._gap.set()  # messages published while we were away are lost: catch up

    def _deliver(self, channel: str, data: str) -> None:
        if channel not in self._channels:
            return  # unsubscribed while this message was in flight
        try:
            self._queue.put_nowait(Event(channel=channel, message=data))
        except asyncio.QueueFull:
            # Drop the newest instead of blocking: a reader that blocks stops draining the
            # socket, and Redis then disconnects us at its pub/sub output buffer limit.
            self._dropped += 1
            self._gap.set()

    def _confirm(self, channel: str) -> None:
        for waiter in self._confirm_waiters.get(channel, []):
            if not waiter.done():
                waiter.set_result(None)

    async def _send(self, channel: str, command: str) -> None:
        """SUBSCRIBE/UNSUBSCRIBE on the live session, if any; its reply reaches `_on_reply`."""
        session = self._session
        if session is None or session.lost:
            return  # the next session subscribes exactly self._channels
        session.send(command.upper(), channel)  # a closed link ends itself: the reader replaces it

    def _backoff(self, failures: int) -> float:
        ceiling = min(RECONNECT_BACKOFF_MAX_S, RECONNECT_BACKOFF_INITIAL_S * 2 ** min(failures, 16))
        # Jitter spreads the reconnects of many nodes after one Redis restart.
        return ceiling * random.uniform(0.5, 1.0)

    # -- the notifier --------------------------------------------------------------------------

    async def _notify_forever(self) -> None:
        while True:
            await self._gap.wait()
            self._gap.clear()
            await asyncio.gather(*(self._call(listener) for listener in list(self._listeners)))
            await asyncio.sleep(GAP_NOTIFY_INTERVAL_S)

    async def _call(self, listener: ReconnectListener) -> None:
        try:
            await listener()
        except Exception:
            log.exception("reconnect listener %r failed", listener)

    # -- cleanup -------------------------------------------------------------------------------

    async def _close_clients(self) -> None:
        if self._pub_client is not None:
            await self._pub_client.aclose(close_connection_pool=True)
        self._pub_client = None
        if self._session is not None:
            self._session.fail(RedisConnectionError("the backend is disconnected"))
            self._session = None
