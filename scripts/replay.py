"""Rebuild the read models from the event log: `python scripts/replay.py [--projection NAME] [--verify]`.

The same as `loopify replay`, against the same configuration (env vars, LOOPIFY_DATA_DIR).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bootstrap import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["replay", *sys.argv[1:]]))
