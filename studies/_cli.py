"""Shared command-line plumbing of the entry points: import path, one-line errors, exit code 2."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def run_main(main) -> None:
    """Call ``main()``; bad input (``InputError``) becomes ``error: <one line>`` and exit code 2."""
    from fsrf.errors import InputError

    try:
        code = main()
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
