"""Run the load benchmark: `python scripts/bench.py [--scenario chat|group|connections] ...`.

The same as `loopify bench` (see `scripts/bench/cli.py`, or `--help`), with the same configuration
(JWT_SECRET for `--url`).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bootstrap import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["bench", *sys.argv[1:]]))
