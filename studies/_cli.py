"""Shared command-line plumbing of the entry points: the repository's root, offline Hugging Face, and
``run_main`` (one-line errors, exit code 2).

Each entry point opens with

    if not __package__:  # `python studies/<name>.py` from a checkout: make `studies` and `fsrf` importable
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

so that it runs from a checkout that was not pip-installed and imports as ``studies.<name>`` in tests.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from fsrf.errors import run_main  # noqa: E402,F401  (re-exported for the entry points)
