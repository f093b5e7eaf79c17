"""The progress line, printed once a second to stderr while a step runs or sockets open, and the
/health poller behind its projection-lag column (also the source of `projection_lag_positions`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TextIO

import httpx

from scripts.bench.metering import Meter
from scripts.bench.pool import WorkerPool
from scripts.bench.provision import health, projection_lag

HEALTH_POLL_S = 1.0  # /health costs the server a database and a Redis probe: once a second is plenty
HEALTH_JOIN_S = 5.0  # a /health answer times out after 2 s; then the poller thread ends


class LagSampler:
    """Polls every node's /health once a second in a thread of its own (a busy server may take a
    second to answer, and the progress line must not wait for it); keeps the largest lag seen."""

    def __init__(self, health_urls: list[str]) -> None:
        self.health_urls = health_urls
        self.samples: list[int] = []
        self.latest: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="bench-health", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(HEALTH_JOIN_S)

    def _poll(self) -> None:
        with httpx.Client() as client:
            while not self._stop.is_set():
                lags = [projection_lag(health(client, url)) for url in self.health_urls]
                known = [lag for lag in lags if lag is not None]
                if known:
                    self.latest = max(known)
                    self.samples.append(self.latest)
                self._stop.wait(HEALTH_POLL_S)


class Progress:
    """The once-a-second line: what the workers did since the last line, the read model's lag."""

    def __init__(self, label: str, pool: WorkerPool, meter: Meter, health_urls: list[str], out: TextIO) -> None:
        self.label = label
        self.pool = pool
        self.meter = meter
        self.out = out
        self.lag = LagSampler(health_urls)
        self._began = self._last_at = time.monotonic()
        self._last = pool.totals()

    def __enter__(self) -> Progress:
        self.lag.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.lag.stop()

    def tick(self) -> None:
        now, totals = time.monotonic(), self.pool.totals()
        elapsed = max(now - self._last_at, 1e-3)
        per_s = {name: (totals[name] - self._last.get(name, 0)) / elapsed for name in totals}
        self._last, self._last_at = totals, now
        self.meter.sample()
        lag = self.lag.latest
        print(
            f"[{self.label}] {now - self._began:5.1f}s  sent {totals['sent']:,} ({per_s['sent']:,.0f}/s)  "
            f"acked {totals['acked']:,} ({per_s['acked']:,.0f}/s)  delivered {totals['delivered']:,} "
            f"({per_s['delivered']:,.0f}/s)  errors {totals['errors']:,}  "
            f"projection lag {'-' if lag is None else lag} events",
            file=self.out,
            flush=True,
        )


def connect_ticker(pool: WorkerPool, wanted: int, out: TextIO) -> Callable[[], None]:
    """The progress line while sockets open."""
    began = time.monotonic()

    def tick() -> None:
        connected = pool.totals()["connected"]
        print(f"[connect] {time.monotonic() - began:5.1f}s  connected {connected:,} of {wanted:,}", file=out, flush=True)

    return tick
