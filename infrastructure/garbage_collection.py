"""The garbage collector's settings for a long-running server process (api or projector).

CPython collects its youngest generation every 700 net new container objects, and whatever is
alive at two such collections in a row moves to the oldest generation. Under load that catches
every message still in flight (its command, its frames, its awaiting coroutines), so at 3,000
messages/s a few thousand objects a second reached the oldest generation, and once they made up
a quarter of it CPython ran a full collection: every 8-35 s in the api process, 150-250 ms each
with the event loop stopped, collecting nothing (its ~300,000 objects are mostly the sockets'
own, alive for as long as the sockets). Each such pause was a burst of late messages.

Two settings, as large Python services do (Instagram's `gc.freeze`, Zulip's thresholds):
- `gc.freeze()` once the process is built: the modules, the app and its pools live as long as
  the process, so full collections stop walking them again and again;
- a young generation ten times larger, so an object has to live about ten times longer (tens of
  milliseconds under load, far longer than a message is in flight) before it is promoted. Full
  collections become rare; young ones stay short because most young objects are already gone.
Cycles are still collected: only how often each generation is walked changes.
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
