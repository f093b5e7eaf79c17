"""What `loopify replay` prints: progress while it builds, then a summary or the differences."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

PROGRESS_EVERY_S = 1.0  # one progress line a second: readable, and cheap next to the work


class ProgressPrinter:
    def __init__(self, out: TextIO = sys.stderr) -> None:
        self.out = out
        self._last = 0.0

    def __call__(self, progress: Any) -> None:
        now = time.monotonic()
        if now - self._last < PROGRESS_EVERY_S:
            return
        self._last = now
        eta = f"{progress.eta_s:.0f} s" if progress.eta_s is not None else "?"
        self.out.write(
            f"replay: position {progress.position:,} of {progress.head:,}"
            f"  {progress.events_per_s:,.0f} events/s  ETA {eta}\n"
        )
        self.out.flush()


def print_report(report: Any, out: TextIO = sys.stdout) -> None:
    if report.switched:
        out.write(
            f"rebuilt generation {report.generation}: {report.events:,} events in {report.elapsed_s:.1f} s"
            f" ({report.events_per_s:,.0f} events/s), now live at position {report.position:,}\n"
        )
        if report.verified:
            out.write("verify: no differences\n")
        return
    out.write("verify: the rebuilt model differs from the live one; the live model was kept\n")
    for table, rows in report.differences.items():
        for side, row in rows:
            out.write(f"  {table} ({side}): {row}\n")
