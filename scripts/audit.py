"""`python scripts/audit.py ARGS` runs `loopify audit ARGS`, for checkouts without the console script.

Same parser, same configuration (env vars, `LOOPIFY_DATA_DIR`), same output: it only prepends
the subcommand and hands over to the composition root.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a file, Python puts scripts/ on the path, not the repository root that holds the packages.
REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bootstrap import main  # noqa: E402  (needs the path set above)


def run(argv: list[str]) -> int:
    return main(["audit", *argv])


if __name__ == "__main__":
    raise SystemExit(run(sys.argv[1:]))
