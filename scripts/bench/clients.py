"""One load-generator worker: a process with one asyncio loop driving many real /ws clients.

The parent (pool.py) drives it over a pipe, one command at a time, and gets one dict back:
  connect    open the sockets (token in `?token=`), wait for each `connected` frame
  run        send `send_message` on an open-loop schedule for one step, then wait for the acks
  verify     given every message acked in the step, wait until each device has the ones it
             should get (or the drain timeout), then count lost / duplicates / out of order
  heartbeat  one `heartbeat` round trip per socket (idle connections are alive)
  typing     start (or stop) the typists: join their conversation, then `typing` every N s
  close      close every socket and exit
Running counters go to a shared array for the parent's progress line.

Open loop: message n of a step is due at start + phase + n / rate whether or not earlier ones
were acked, and every latency is measured from that due time, so a stalled server (or a starved
generator) shows up as latency instead of quietly lowering the offered load. How late the
generator itself was is reported apart (`generator_lag_ms`). Timestamps are
`time.monotonic_ns()`: CLOCK_MONOTONIC is one clock for every process on a Linux machine, so the
due time a sender writes into `clientMessageId` is comparable with a receiver's clock.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import time
import traceback
from array import array
from collections import Counter
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import orjson

from scripts.bench.ledger import (
    NS_PER_MS,
    Device,
    Step,
    client_message_id,
    due_deliveries,
    record_delivery,
    still_missing,
    verdict,
)
from scripts.bench.socket_client import BenchSocket, SocketClosed, connect

COUNTER_NAMES = ("connected", "sent", "acked", "errors", "delivered", "typing")
CONNECT_CONCURRENCY = 50  # handshakes in flight per worker: each one costs the server a query and SUBSCRIBEs
OPEN_TIMEOUT_S = 30.0  # a 2-core box opening thousands of sockets answers slowly, but does answer
CLOSE_TIMEOUT_S = 5.0  # the closing handshake of every socket together; a dead peer is not waited for
MAX_FRAME_BYTES = 4 * 1024 * 1024  # server frames carry one message (at most 4,000 characters)
ACK_TIMEOUT_S = 30.0  # after the send window: an overloaded step still drains its backlog in this time
SEND_OVERRUN_S = 5.0  # a generator this far behind its schedule stops the step rather than run on
DRAIN_POLL_S = 0.05
SETTLE_S = 0.2  # after the last ack, deliveries must pause this long before the step replies ...
SETTLE_LIMIT_S = 2.0  # ... waiting at most this long (what is still missing, the verify drains)
HEARTBEAT_TIMEOUT_S = 30.0
COUNTER_PUBLISH_S = 0.25  # the parent prints once a second; four updates keep the line current
# A typical marketplace chat line (~80 characters), the same for every message.
CONTENT = "Hi! Is the bike still available? I could pick it up on Saturday morning if so."


def worker_main(index: int, pipe: Connection, counters: Any) -> None:
    """The worker process's entry point (multiprocessing target)."""
    # Ctrl-C reaches the whole process group; the parent decides when a worker stops (its
    # `close` command, or the pipe's end when the parent is gone), so the sockets close cleanly.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # uvloop, as the server uses: a worker's cost per frame is mostly the loop's callbacks and
    # socket reads, and it is CPU the servers under measurement do not get.
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(Worker(index, pipe, counters).serve())


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # not on every platform (see pyproject.toml): the standard loop
        return None
    return uvloop.new_event_loop


def due_ns(start_ns: int, phase_ns: int, rate: float, n: int) -> int:
    """When send n of a worker's step is due: `phase_ns` after the common start, then one every
    1/rate (the scenario phases the workers so that their sends interleave)."""
    return start_ns + phase_ns + int(n * (1e9 / rate))


class Worker:
    def __init__(self, index: int, pipe: Connection, counters: Any) -> None:
        self.index = index
        self.pipe = pipe
        self.counters = counters
        self.devices: list[Device] = []
        self.slots: list[tuple[str, Device]] = []  # (conversation id, sending device), round robin
        self.typists: list[tuple[str, Device]] = []  # (conversation id, typing device)
        self.typing_tasks: list[asyncio.Task[None]] = []
        self.pending: dict[int, tuple[int, str, str, int]] = {}  # request id -> step, conversation, sender, due
        self.heartbeats: dict[int, asyncio.Future[int]] = {}
        self.step = Step(-1)
        self.next_request = 1
        self.closing = False
        self.last_delivery_ns = 0  # when the last `message_received` arrived (monotonic ns)
        self.disconnects: Counter[str] = Counter()
        self.totals = dict.fromkeys(COUNTER_NAMES, 0)

    # ---- the command loop ----------------------------------------------------------------------

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        publisher = asyncio.create_task(self._publish_counters())
        handlers = {
            "connect": self._connect,
            "run": self._run,
            "verify": self._verify,
            "heartbeat": self._heartbeat,
            "typing": self._typing,
            "close": self._close,
        }
        try:
            while True:
                try:
                    command = await loop.run_in_executor(None, self.pipe.recv)
                except (EOFError, OSError):
                    return  # the parent is gone: close the sockets and exit
                try:
                    reply = await handlers[command["op"]](command)
                except Exception:
                    reply = {"failed": f"worker {self.index}: {traceback.format_exc()}"}
                self.pipe.send(reply)
                if command["op"] == "close":
                    return
        finally:
            publisher.cancel()
            await self._close({})

    async def _publish_counters(self) -> None:
        base = self.index * len(COUNTER_NAMES)
        while True:
            for offset, name in enumerate(COUNTER_NAMES):
                self.counters[base + offset] = self.totals[name]
            await asyncio.sleep(COUNTER_PUBLISH_S)

    # ---- connect / close ----------------------------------------------------------------------

    async def _connect(self, command: dict[str, Any]) -> dict[str, Any]:
        limit = asyncio.Semaphore(CONNECT_CONCURRENCY)
        failures: Counter[str] = Counter()
        connect_ms: array[float] = array("d")
        by_user: dict[str, Device] = {}

        async def open_one(user: str, url: str, conversations: list[str]) -> None:
            async with limit:
                began = time.monotonic_ns()
                try:
                    ws = await asyncio.wait_for(_open(url), OPEN_TIMEOUT_S)
                except Exception as error:  # one client's failure is counted, never fatal to others
                    failures[type(error).__name__] += 1
                    return
                connect_ms.append((time.monotonic_ns() - began) / NS_PER_MS)
                self.totals["connected"] += 1
                device = Device(user, ws, frozenset(conversations))
                self._listen(device)
                self.devices.append(device)
                by_user[user] = device

        await asyncio.gather(*(open_one(*spec) for spec in command["devices"]))
        # The sockets live as long as the run: out of the collector's full passes, which
        # otherwise walk them all and pause this worker's receipt times (docs/performance.md).
        gc.freeze()
        self.slots = [(cid, by_user[user]) for cid, user in command["slots"] if user in by_user]
        self.typists = [(cid, by_user[user]) for cid, user in command.get("typists", ()) if user in by_user]
        return {
            "connected": len(self.devices),
            "failures": dict(failures),
            "connect_ms": connect_ms.tobytes(),
        }

    async def _close(self, command: dict[str, Any]) -> dict[str, Any]:
        self.closing = True
        await self._typing({"every": 0})
        devices, self.devices = self.devices, []
        if devices:
            await asyncio.wait([asyncio.ensure_future(device.ws.close()) for device in devices], timeout=CLOSE_TIMEOUT_S)
        return {"closed": len(devices)}

    # ---- reading ------------------------------------------------------------------------------

    def _listen(self, device: Device) -> None:
        """Read the device's frames as they arrive (callbacks: no task per socket or frame)."""

        def on_message(raw: str | bytes) -> None:
            frame = orjson.loads(raw)
            event = frame.get("event")
            if event == "message_received":
                self._on_message(device, frame.get("data") or {})
            elif event == "ack" or event == "error":
                self._on_reply(frame, event)

        def on_closed(code: int, reason: str) -> None:
            if not self.closing:
                self.disconnects[reason or f"close code {code}"] += 1

        device.ws.listen(on_message, on_closed)

    def _on_message(self, device: Device, data: dict[str, Any]) -> None:
        self.last_delivery_ns = now = time.monotonic_ns()
        if record_delivery(self.step, device, data, now):
            self.totals["delivered"] += 1

    def _on_reply(self, frame: dict[str, Any], event: str) -> None:
        now = time.monotonic_ns()
        request = frame.get("id")
        waiter = self.heartbeats.pop(request, None) if isinstance(request, int) else None
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(now)
            return
        entry = self.pending.pop(request, None) if isinstance(request, int) else None
        step = self.step
        if entry is None:
            if event == "error":  # an error for no request of ours: still an error
                step.errors[f"unsolicited {(frame.get('data') or {}).get('code')}"] += 1
                self.totals["errors"] += 1
            return
        number, cid, sender, due = entry
        if number != step.number:
            return  # a reply after its step gave up waiting: already counted as unacked
        step.outstanding -= 1
        if event == "ack":
            message = (frame.get("data") or {}).get("message") or {}
            step.acks.append((message.get("id"), cid, message.get("seq"), sender, due, now))
            step.ack_ms.append((now - due) / NS_PER_MS)
            self.totals["acked"] += 1
        else:
            step.errors[str((frame.get("data") or {}).get("code"))] += 1
            self.totals["errors"] += 1
        if step.sending_done and step.outstanding == 0:
            step.answered.set()

    # ---- a step: send on schedule, then wait for the acks ---------------------------------------

    async def _run(self, command: dict[str, Any]) -> dict[str, Any]:
        step = self.step = Step(command["step"])
        for device in self.devices:
            device.new_step()
        rate, start_ns, phase_ns = float(command["rate"]), int(command["start_ns"]), int(command["phase_ns"])
        step.planned = int(rate * command["duration"]) if rate > 0 and self.slots else 0
        hard_stop = start_ns + int((command["duration"] + SEND_OVERRUN_S) * 1e9)
        n = 0
        while n < step.planned:  # bounded in count (planned) and in time (hard_stop)
            now = time.monotonic_ns()
            due = due_ns(start_ns, phase_ns, rate, n)  # planned > 0 only when rate > 0
            if due > now:
                await asyncio.sleep((due - now) / 1e9)
                continue
            if now > hard_stop:
                break
            cid, device = self.slots[n % len(self.slots)]
            step.generator_lag_ms.append((now - due) / NS_PER_MS)
            await self._send(step, device, cid, due)
            n += 1
        step.sending_done = True
        if step.outstanding > 0:
            try:
                await asyncio.wait_for(step.answered.wait(), ACK_TIMEOUT_S)
            except asyncio.TimeoutError:
                pass
        unacked = step.outstanding
        await self._settle()
        self.pending = {rid: entry for rid, entry in self.pending.items() if entry[0] != step.number}
        return {
            "planned": step.planned,
            "sent": step.sent,
            "acked": len(step.acks),
            "unacked": unacked,
            "errors": dict(step.errors),
            "acks": step.acks,
            "ack_ms": step.ack_ms.tobytes(),
            "generator_lag_ms": step.generator_lag_ms.tobytes(),
        }

    async def _settle(self) -> None:
        """Let the step's last deliveries arrive before replying. The reply pickles every ack
        of this worker's sends (180,000 in a two-minute step at 3,000 msg/s with two workers)
        in one C call that holds the event loop for a few hundred ms, and deliveries arriving
        meanwhile were stamped that much late: the last messages of a two-minute step measured
        220-390 ms instead of ~10."""
        deadline = time.monotonic_ns() + int(SETTLE_LIMIT_S * 1e9)
        while (now := time.monotonic_ns()) < deadline:  # bounded by SETTLE_LIMIT_S
            quiet_s = (now - self.last_delivery_ns) / 1e9
            if quiet_s >= SETTLE_S:
                return
            await asyncio.sleep(SETTLE_S - quiet_s)

    async def _send(self, step: Step, device: Device, cid: str, due: int) -> None:
        request = self.next_request
        self.next_request += 1
        data = {
            "conversationId": cid,
            "content": CONTENT,
            "clientMessageId": client_message_id(step.number, due, self.index, request),
        }
        text = orjson.dumps({"event": "send_message", "id": request, "data": data}).decode()
        self.pending[request] = (step.number, cid, device.user, due)
        step.outstanding += 1
        try:
            await device.ws.send(text)
        except SocketClosed:
            self.pending.pop(request, None)
            step.outstanding -= 1
            step.errors["socket closed"] += 1
            self.totals["errors"] += 1
            return
        step.sent += 1
        self.totals["sent"] += 1

    # ---- verify: every device got every message it should, once, in order ----------------------

    async def _verify(self, command: dict[str, Any]) -> dict[str, Any]:
        expected = [tuple(message) for message in command["expected"]]
        due = due_deliveries(self.devices, expected)
        missing = still_missing(due)
        deadline = time.monotonic() + float(command["drain_timeout"])
        while missing and time.monotonic() < deadline:  # bounded by the drain timeout; the list only shrinks
            await asyncio.sleep(DRAIN_POLL_S)
            missing = still_missing(missing)
        wanted = len(due)
        return {**verdict(self.step, expected, wanted, len(missing)), "disconnects": dict(self.disconnects)}

    # ---- typing: typists refresh `typing` like a real client while someone types --------------

    async def _typing(self, command: dict[str, Any]) -> dict[str, Any]:
        """every > 0: start every typist (each joins, then refreshes every `every` s, phases
        spread over the period); every == 0: stop them. Typing frames carry no id: an `error`
        frame for one is counted as an unsolicited error and fails the step."""
        for task in self.typing_tasks:
            task.cancel()
        self.typing_tasks = []
        every = float(command["every"])
        if every > 0:
            spread = every / max(1, len(self.typists))
            self.typing_tasks = [
                asyncio.create_task(self._type(cid, device, every, i * spread)) for i, (cid, device) in enumerate(self.typists)
            ]
        return {"typists": len(self.typing_tasks)}

    async def _type(self, cid: str, device: Device, every: float, phase: float) -> None:
        join = orjson.dumps({"event": "join_conversation", "data": {"conversationId": cid}}).decode()
        frame = orjson.dumps({"event": "typing", "data": {"conversationId": cid, "isTyping": True}}).decode()
        try:
            await device.ws.send(join)
            await asyncio.sleep(phase)
            while True:  # runs until the `typing` stop command (or close) cancels it
                began = time.monotonic()
                await device.ws.send(frame)
                self.totals["typing"] += 1
                await asyncio.sleep(max(0.0, every - (time.monotonic() - began)))
        except SocketClosed:
            return

    # ---- heartbeat: every idle socket still answers ---------------------------------------------

    async def _heartbeat(self, command: dict[str, Any]) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        samples: array[float] = array("d")

        async def beat(device: Device) -> None:
            request = self.next_request
            self.next_request += 1
            waiter: asyncio.Future[int] = loop.create_future()
            self.heartbeats[request] = waiter
            began = time.monotonic_ns()
            try:
                await device.ws.send(orjson.dumps({"event": "heartbeat", "id": request, "data": {}}).decode())
                answered = await asyncio.wait_for(waiter, HEARTBEAT_TIMEOUT_S)
            except (SocketClosed, asyncio.TimeoutError):
                return
            finally:
                self.heartbeats.pop(request, None)
            samples.append((answered - began) / NS_PER_MS)

        await asyncio.gather(*(beat(device) for device in self.devices))
        return {"alive": len(samples), "heartbeat_ms": samples.tobytes(), "disconnects": dict(self.disconnects)}


async def _open(url: str) -> BenchSocket:
    """Open one /ws client and wait for the server's `connected` frame (sent after the device is
    registered and subscribed, so nothing published afterwards can miss it)."""
    # No extensions offered (the server's default, permessage-deflate off: measure that path),
    # and no pings of its own (a late pong on a saturated box must not close a bench socket).
    ws = await connect(url, open_timeout=OPEN_TIMEOUT_S, max_size=MAX_FRAME_BYTES)
    try:
        while True:  # bounded by the caller's OPEN_TIMEOUT_S
            frame = orjson.loads(await ws.recv())
            if frame.get("event") == "connected":
                return ws
    except BaseException:
        await ws.close()
        raise
