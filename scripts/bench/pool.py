"""The parent's side of the worker processes: start them, send each a command, gather the
replies while calling a progress callback once a second, and stop them.

Workers are spawned (not forked): a child starts clean, without the parent's threads, HTTP
clients or embedded-server handles. Every wait is bounded; a worker that dies or hangs fails the
run with what it said instead of hanging the bench.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

import psutil

from scripts.bench.clients import COUNTER_NAMES, worker_main

CONTEXT = multiprocessing.get_context("spawn")
TICK_S = 1.0  # the progress line's period
STOP_TIMEOUT_S = 15.0  # closing thousands of sockets takes a few seconds; then terminate
KILL_WAIT_S = 5.0


class WorkerError(RuntimeError):
    """A worker failed, died or did not answer in time."""


class WorkerPool:
    def __init__(self, count: int) -> None:
        self.count = count
        self.counters = CONTEXT.Array("q", count * len(COUNTER_NAMES), lock=False)
        self.pipes: list[Connection] = []
        self.processes: list[Any] = []

    def start(self) -> None:
        for index in range(self.count):
            parent_end, child_end = CONTEXT.Pipe()
            process = CONTEXT.Process(
                target=worker_main, args=(index, child_end, self.counters), name=f"bench-worker-{index}", daemon=True
            )
            process.start()
            child_end.close()
            self.pipes.append(parent_end)
            self.processes.append(process)

    def processes_now(self) -> list[psutil.Process]:
        alive = []
        for process in self.processes:
            try:
                alive.append(psutil.Process(process.pid))
            except (psutil.Error, ValueError):
                continue
        return alive

    def totals(self) -> dict[str, int]:
        width = len(COUNTER_NAMES)
        return {
            name: sum(self.counters[worker * width + offset] for worker in range(self.count))
            for offset, name in enumerate(COUNTER_NAMES)
        }

    def request(
        self, commands: list[dict[str, Any]], timeout_s: float, on_tick: Callable[[], None] | None = None
    ) -> list[dict[str, Any]]:
        """Send command i to worker i; return their replies, ticking once a second meanwhile."""
        for pipe, command in zip(self.pipes, commands, strict=True):
            pipe.send(command)
        replies: list[dict[str, Any] | None] = [None] * self.count
        waiting = set(range(self.count))
        deadline = time.monotonic() + timeout_s
        next_tick = time.monotonic() + TICK_S
        while waiting:
            now = time.monotonic()
            for pipe in wait([self.pipes[i] for i in waiting], timeout=max(0.0, min(next_tick, deadline) - now)):
                index = self.pipes.index(pipe)  # type: ignore[arg-type]
                try:
                    replies[index] = pipe.recv()  # type: ignore[union-attr]
                except EOFError:
                    raise WorkerError(f"worker {index} died (exit code {self.processes[index].exitcode})") from None
                waiting.discard(index)
            now = time.monotonic()
            if on_tick is not None and now >= next_tick:
                on_tick()
                next_tick += TICK_S
            if waiting and now > deadline:
                raise WorkerError(f"workers {sorted(waiting)} did not answer {commands[0]['op']} in {timeout_s:.0f} s")
        failed = [reply["failed"] for reply in replies if reply is not None and "failed" in reply]
        if failed:
            raise WorkerError("\n".join(failed))
        return [reply for reply in replies if reply is not None]

    def stop(self) -> None:
        """Ask every worker to close its sockets; terminate whoever does not exit in time."""
        for pipe in self.pipes:
            try:
                pipe.send({"op": "close"})
            except (OSError, ValueError):
                continue
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.terminate()
                process.join(KILL_WAIT_S)
        for pipe in self.pipes:
            pipe.close()
        self.pipes.clear()
        self.processes.clear()
