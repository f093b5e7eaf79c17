"""What the servers the bench started cost: CPU seconds over a window and peak memory.

Only processes the bench started are measured (with `--url` the servers' figures are None): the
loopify server processes (`server_*`), apart from them the embedded Postgres and Redis
(`infra_*`), and the bench's own client workers (`bench_cpu_s`): all share the same two cores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import psutil

from scripts.bench.servers import LocalServers

BYTES_PER_MB = 1024 * 1024


@dataclass(frozen=True)
class Cost:
    server_cpu_s: float | None
    server_rss_mb: float | None
    infra_cpu_s: float | None
    infra_rss_mb: float | None
    bench_cpu_s: float


def cpu_seconds(processes: list[psutil.Process]) -> dict[int, float]:
    totals: dict[int, float] = {}
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        totals[process.pid] = times.user + times.system
    return totals


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two snapshots (a process born in between counts from zero)."""
    return round(sum(total - before.get(pid, 0.0) for pid, total in after.items()), 3)


def rss_bytes(processes: list[psutil.Process]) -> int:
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            continue
    return total


class Meter:
    def __init__(self, servers: LocalServers | None, clients: Callable[[], list[psutil.Process]]) -> None:
        self.servers = servers
        self.clients = clients
        self._client_cpu: dict[int, float] = {}
        self._server_cpu: dict[int, float] = {}
        self._infra_cpu: dict[int, float] = {}
        self._server_peak = 0
        self._infra_peak = 0

    def begin(self) -> None:
        self._client_cpu = cpu_seconds(self.clients())
        if self.servers is None:
            return
        self._server_cpu = cpu_seconds(self.servers.server_processes())
        self._infra_cpu = cpu_seconds(self.servers.infra_processes())
        self._server_peak = self._infra_peak = 0
        self.sample()

    def sample(self) -> None:
        """Note the memory in use now (called once a second: the result is the peak)."""
        if self.servers is None:
            return
        self._server_peak = max(self._server_peak, rss_bytes(self.servers.server_processes()))
        self._infra_peak = max(self._infra_peak, rss_bytes(self.servers.infra_processes()))

    def end(self) -> Cost:
        bench_cpu_s = cpu_delta(self._client_cpu, cpu_seconds(self.clients()))
        if self.servers is None:
            return Cost(None, None, None, None, bench_cpu_s)
        self.sample()
        return Cost(
            server_cpu_s=cpu_delta(self._server_cpu, cpu_seconds(self.servers.server_processes())),
            server_rss_mb=round(self._server_peak / BYTES_PER_MB, 1),
            infra_cpu_s=cpu_delta(self._infra_cpu, cpu_seconds(self.servers.infra_processes())),
            infra_rss_mb=round(self._infra_peak / BYTES_PER_MB, 1),
            bench_cpu_s=bench_cpu_s,
        )

    def api_rss_bytes(self) -> int | None:
        return rss_bytes(self.servers.api_processes()) if self.servers is not None else None
