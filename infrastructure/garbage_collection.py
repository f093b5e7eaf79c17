"""The garbage collector's settings for a long-running server process (api or projector).

CPython runs a young collection every 700 net new container objects; what survives moves up a
generation, and a full collection runs once the objects promoted into the oldest generation
since the last one make up a quarter of it. At 3,000 messages/s the api process ran a full
collection every 7-34 s, 187-233 ms each with the event loop stopped, freeing at most 98
objects: its ~310,000 are mostly the sockets' own, alive as long as the sockets, and what kept
filling the oldest generation was presumably the messages in flight (commands, frames,
awaiting coroutines). Each pause came out as a burst of late messages (docs/performance.md,
the twelfth session).

Two settings:
- `gc.freeze()` once the modules are imported and the app is built: they live as long as the
  process, so full collections stop walking them again and again (and never free them). The
  api's pools are built later, at start-up, and stay with the collector;
- a young collection every 7,000 net new objects instead of 700, so fewer objects in flight
  are caught alive and promoted. In two-minute runs at 3,000 msg/s the api ran no full
  collection at all, against 3-6 per run before.
Cycles made after the freeze are still collected; only how often each generation is walked
changes.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 7_000  # CPython's default is 700; see the module docstring


def tune_for_server() -> None:
    """Call once the process has built its long-lived objects, before it takes load."""
    gc.collect()  # what start-up left as garbage goes now, not into the frozen set
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, oldest)
