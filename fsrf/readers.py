"""File readers for the ``mmsa`` and ``transcripts`` sources (SPEC section 1): files in, ``Split`` out.

Every reader returns ``{"train": Split, "valid": Split, "test": Split}`` and checks what it reads. A
bad file is an ``InputError`` whose message names the file and the field (``"aligned_50.npz:
train/audio: ..."``); non-finite features are replaced by 0 and counted in one warning per file and
field. Indices and rows in messages count from 0 (for a CSV: data rows, header excluded).

MMSA files (thuiar/MMSA ``aligned_50.pkl``, ``unaligned_50.pkl``) are pickles, and a pickle runs code
when loaded, so ``read_mmsa_pickle`` needs ``trust_pickle=True``. ``convert_mmsa`` turns a pickle once
into the safe ``.npz`` layout below, which ``read_mmsa_npz`` reads with ``allow_pickle=False``.

Safe layout (one ``np.savez`` archive, no object arrays):

    format                 ()              str, "fsrf-mmsa-npz/1"
    source                 ()              str, the name of the pickle it was converted from
    <split>/text           (N,)            str, raw utterances            (MMSA raw_text)
    <split>/ids            (N,)            str, sample ids                (MMSA id)
    <split>/labels         (N,)            float32 in [-3, 3]             (MMSA regression_labels)
    <split>/audio          (N, T_a, d_a)   float32, d_a in (5, 74), finite
    <split>/audio_lengths  (N,)            int64 in [1, T_a]
    <split>/vision         (N, T_v, d_v)   float32, d_v in (20, 35), finite
    <split>/vision_lengths (N,)            int64 in [1, T_v]
    <split>/text_ids       (N, T_l)        int64, optional                (MMSA text_bert[:, 0])
    <split>/text_mask      (N, T_l)        int64, optional                (MMSA text_bert[:, 1])

for <split> in train, valid, test. The archive holds the checked, cleaned data: non-finite values are
already 0 and derived lengths are stored, so reading it warns about nothing the conversion did not.

Axis legend: N samples, T_m frames (tokens for text) of modality m, d_m feature width.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from fsrf.data import SPLITS, Split
from fsrf.errors import InputError

NPZ_FORMAT = "fsrf-mmsa-npz/1"
AUDIO_DIMS = (5, 74)  # MMSA's MOSI files carry 5 COVAREP features, MOSEI 74
VISION_DIMS = (20, 35)  # MMSA's MOSI files carry 20 Facet features, MOSEI 35
LABEL_RANGE = (-3.0, 3.0)
UTTERANCE_AUDIO_DIM = 73  # the shared MOSI audio.parquet: 73 utterance-level acoustic features
CSV_SPLIT_NAMES = {"train": "train", "dev": "valid", "valid": "valid", "test": "test"}
_PICKLE_SUFFIXES = (".pkl", ".pickle")
_BLOCK = 1024  # samples per block when cleaning features, so the mask of a 5 GB array stays small


# --------------------------------------------------------------------------------------------------
# MMSA pickles


def read_mmsa_pickle(path: str | os.PathLike, *, trust_pickle: bool) -> dict[str, Split]:
    """Read one of the field's MMSA pickles (``aligned_50.pkl``/``unaligned_50.pkl``) into three splits.

    Only with ``trust_pickle=True``: unpickling runs whatever code the file names. Prefer converting the
    file once with ``convert_mmsa`` (``python studies/convert_mmsa.py FILE --trust-pickle``) and reading
    the ``.npz``. Per split the keys ``raw_text``, ``id``, ``regression_labels``, ``audio`` and
    ``vision`` are required; ``text_bert`` (N, 3, T_l) is optional (without it ``text_ids``/``text_mask``
    are None, and a text encoder tokenises ``raw_text`` itself); ``text`` (GloVe/BERT features) is ignored.
    Where ``audio_lengths``/``vision_lengths`` are absent (MMSA's aligned files), a sample's length is
    the number of frames up to and including its last frame with any non-zero value, at least 1; a
    frame holding a non-finite value counts as data, not padding. Given lengths of 0 are raised to 1,
    the same floor (MMSA's own ``getLengths.py`` uses it too).
    """
    path = Path(path)
    where = str(path)
    _require_file(path)
    if not trust_pickle:
        raise InputError(
            where,
            None,
            "refusing to load a pickle, because unpickling runs code from the file; if you trust it, "
            "pass trust_pickle=True, or convert it once to the safe .npz format with "
            f"`python studies/convert_mmsa.py {path.name} --trust-pickle` and read the .npz",
        )
    try:
        with path.open("rb") as fh:
            data = pickle.load(fh)
    except Exception as exc:  # unpickling can fail in any way the file's contents choose
        raise InputError(where, None, f"not a readable pickle ({_describe(exc)})") from exc
    if not isinstance(data, dict):
        raise InputError(where, None, f"expected a dict with keys {', '.join(SPLITS)}, got {type(data).__name__}")

    out = {}
    for name in SPLITS:
        if name not in data:
            raise InputError(where, name, f"missing split; the file has keys: {_names(data)}")
        part = data[name]
        if not isinstance(part, dict):
            raise InputError(where, name, f"expected a dict of arrays, got {type(part).__name__}")

        def get(key: str, required: bool = True, part=part, name=name) -> tuple[str, Any]:
            field = f"{name}/{key}"
            if key in part:
                return field, part[key]
            if required:
                raise InputError(where, field, f"missing key; split {name!r} has keys: {_names(part)}")
            return field, None

        labels = get("regression_labels")
        text_bert = get("text_bert", required=False)
        text_ids = text_mask = (text_bert[0], None)
        if text_bert[1] is not None:
            tb = _numeric(where, text_bert[0], text_bert[1])
            if tb.ndim != 3 or tb.shape[1] != 3:
                raise InputError(
                    where, text_bert[0], f"expected shape (N, 3, T_l) (ids, mask, segments), got {tb.shape}"
                )
            text_ids, text_mask = (text_bert[0], tb[:, 0]), (text_bert[0], tb[:, 1])
        out[name] = _build_split(
            where,
            name,
            labels=labels,
            text=get("raw_text"),
            ids=get("id"),
            audio=get("audio"),
            audio_lengths=get("audio_lengths", required=False),
            vision=get("vision"),
            vision_lengths=get("vision_lengths", required=False),
            text_ids=text_ids,
            text_mask=text_mask,
        )
    return out


def convert_mmsa(pkl_path: str | os.PathLike, out_path: str | os.PathLike, *, trust_pickle: bool) -> Path:
    """Convert an MMSA pickle once into the safe ``.npz`` layout (module docstring); returns ``out_path``.

    The pickle is read and checked in full first (so it needs ``trust_pickle=True``), then written to a
    temporary file in the output's folder and renamed over ``out_path``: a failed conversion leaves no
    partial file and an existing ``out_path`` untouched.
    """
    pkl_path, out_path = Path(pkl_path), Path(out_path)
    if out_path.suffix != ".npz":
        raise InputError(str(out_path), None, "the output must end in .npz (read_mmsa dispatches on the suffix)")
    folder = out_path.parent
    if not folder.is_dir():
        raise InputError(str(out_path), None, f"the output folder {str(folder)!r} does not exist")
    splits = read_mmsa_pickle(pkl_path, trust_pickle=trust_pickle)

    arrays = {"format": np.array(NPZ_FORMAT), "source": np.array(pkl_path.name)}
    for name, split in splits.items():
        arrays[f"{name}/text"] = np.array(split.text, dtype=str)
        arrays[f"{name}/ids"] = np.array(split.ids, dtype=str)
        arrays[f"{name}/labels"] = split.labels
        arrays[f"{name}/audio"] = split.audio
        arrays[f"{name}/audio_lengths"] = split.audio_lengths
        arrays[f"{name}/vision"] = split.vision
        arrays[f"{name}/vision_lengths"] = split.vision_lengths
        if split.text_ids is not None:
            arrays[f"{name}/text_ids"] = split.text_ids
            arrays[f"{name}/text_mask"] = split.text_mask

    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{out_path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out_path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise InputError(str(out_path), None, f"cannot write ({_describe(exc)})") from exc
        raise
    return out_path


def read_mmsa_npz(path: str | os.PathLike) -> dict[str, Split]:
    """Read the safe ``.npz`` layout (module docstring) written by ``convert_mmsa``, never unpickling.

    The default input of the ``mmsa`` source. The same checks as for the pickle apply, so a hand-made
    archive in this layout is accepted too; absent ``*_lengths`` are derived as for the pickle, and
    ``text_ids``/``text_mask`` are optional (both or neither).
    """
    path = Path(path)
    where = str(path)
    _require_file(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except ValueError as exc:  # numpy's answer for anything that is not .npy/.npz: "pickled data"
        raise InputError(where, None, "not an .npz archive (reading it would need pickle, which is refused)") from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(where, None, f"not a readable .npz archive ({_describe(exc)})") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise InputError(where, None, "holds a single .npy array, expected an .npz archive (see convert_mmsa)")

    with archive:
        keys = set(archive.files)

        def load(key: str) -> np.ndarray:
            try:
                return archive[key]
            except ValueError as exc:
                raise InputError(where, key, "holds Python objects, which need pickle; refused") from exc
            except (OSError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
                raise InputError(where, key, f"corrupt entry ({_describe(exc)})") from exc

        if "format" in keys and str(load("format")) != NPZ_FORMAT:
            raise InputError(where, "format", f"unknown format {str(load('format'))!r}, expected {NPZ_FORMAT!r}")

        out = {}
        for name in SPLITS:

            def get(key: str, required: bool = True, name=name) -> tuple[str, Any]:
                field = f"{name}/{key}"
                if field in keys:
                    return field, load(field)
                if required:
                    present = sorted(k for k in keys if k.startswith(f"{name}/")) or sorted(keys)
                    raise InputError(where, field, f"missing key; the archive has: {', '.join(present)}")
                return field, None

            labels = get("labels")
            text_ids, text_mask = get("text_ids", required=False), get("text_mask", required=False)
            if (text_ids[1] is None) != (text_mask[1] is None):
                absent = text_ids[0] if text_ids[1] is None else text_mask[0]
                raise InputError(where, absent, "missing key; text_ids and text_mask come together")
            out[name] = _build_split(
                where,
                name,
                labels=labels,
                text=get("text"),
                ids=get("ids"),
                audio=get("audio"),
                audio_lengths=get("audio_lengths", required=False),
                vision=get("vision"),
                vision_lengths=get("vision_lengths", required=False),
                text_ids=text_ids,
                text_mask=text_mask,
            )
    return out


def read_mmsa(path: str | os.PathLike, *, trust_pickle: bool = False) -> dict[str, Split]:
    """Read an MMSA dataset by its suffix: ``.npz`` safe layout, ``.pkl``/``.pickle`` only if trusted."""
    path = Path(path)
    if path.suffix == ".npz":
        return read_mmsa_npz(path)
    if path.suffix in _PICKLE_SUFFIXES:
        return read_mmsa_pickle(path, trust_pickle=trust_pickle)
    raise InputError(str(path), None, f"unknown suffix {path.suffix!r}; expected .npz, .pkl or .pickle")


# --------------------------------------------------------------------------------------------------
# Transcript CSVs


def read_transcripts(
    path: str | os.PathLike,
    *,
    text_column: str = "text",
    label_column: str = "label",
    split_column: str = "mode",
    audio_path: str | os.PathLike | None = None,
    audio_dim: int = UTTERANCE_AUDIO_DIM,
) -> dict[str, Split]:
    """Read a CSV of real utterances (one row each: text, label, split) into three splits.

    Split names ``train``, ``dev`` or ``valid`` (both map to "valid"), ``test``; anything else is an
    error that lists the unknown names. Rows keep the file's order within a split. Ids come from an
    ``id`` column, else ``video_id`` and ``clip_id`` joined by ``$_$`` (MMSA's convention, the MOSEI
    file), else the row number. Every cell is read as text first, so ids such as ``007`` keep their
    zeros; an empty text is an error.

    Without ``audio_path`` audio and vision are None: text only, so only the ``l`` condition applies.
    With it, ``read_utterance_audio`` joins one feature vector per utterance to the CSV by id (the
    shared MOSI ``audio.parquet``), each split's audio a sequence of one frame, (N, 1, audio_dim) with
    lengths 1: the data then carries (l, a).
    """
    path = Path(path)
    where = str(path)
    _require_file(path)
    try:
        df = pl.read_csv(path, infer_schema_length=0)  # every column as str; parsed below
    except (pl.exceptions.PolarsError, OSError, UnicodeDecodeError) as exc:
        raise InputError(where, None, f"not a readable CSV ({_describe(exc)})") from exc
    for column in (text_column, label_column, split_column):
        if column not in df.columns:
            raise InputError(where, column, f"no such column; the file has: {', '.join(df.columns)}")
    if df.height == 0:
        raise InputError(where, None, "no data rows below the header")

    raw_labels = df[label_column]
    labels = raw_labels.str.strip_chars().cast(pl.Float64, strict=False).to_numpy()  # unparsable -> NaN
    bad = ~((labels >= LABEL_RANGE[0]) & (labels <= LABEL_RANGE[1]))  # NaN fails both comparisons
    if bad.any():
        row = int(np.argmax(bad))
        raise InputError(
            where, label_column, f"label not a number in [-3, 3] at row {row} (data rows from 0): {raw_labels[row]!r}"
        )

    texts = df[text_column]
    if texts.null_count():
        row = int(np.argmax(texts.is_null().to_numpy()))
        raise InputError(where, text_column, f"empty text at row {row} (data rows from 0)")

    modes = df[split_column].str.strip_chars().fill_null("")
    unknown = sorted(set(modes.unique().to_list()) - set(CSV_SPLIT_NAMES))
    if unknown:
        counts = ", ".join(f"{name!r} ({(modes == name).sum()} rows)" for name in unknown)
        raise InputError(where, split_column, f"unknown split names {counts}; expected train, dev or valid, test")
    mapped = modes.replace_strict(CSV_SPLIT_NAMES, return_dtype=pl.String).to_numpy()

    if "id" in df.columns:
        ids = df["id"].fill_null("").to_list()
    elif "video_id" in df.columns and "clip_id" in df.columns:
        ids = (df["video_id"].fill_null("") + "$_$" + df["clip_id"].fill_null("")).to_list()
    else:
        if audio_path is not None:
            raise InputError(where, "id", "no id column (nor video_id and clip_id) to join the audio features "
                                          f"of {audio_path} by; the file has: {', '.join(df.columns)}")
        ids = [str(i) for i in range(df.height)]
    text_list = texts.to_list()
    audio = None if audio_path is None else read_utterance_audio(audio_path, ids, dim=audio_dim, csv=where)

    out = {}
    for name in SPLITS:
        rows = np.flatnonzero(mapped == name)
        if len(rows) == 0:
            found = ", ".join(sorted(set(modes.to_list())))
            raise InputError(where, split_column, f"empty split: no rows for {name!r} (the file has: {found})")
        out[name] = Split(
            name=name,
            text=[text_list[i] for i in rows],
            labels=labels[rows].astype(np.float32),
            ids=[ids[i] for i in rows],
        )
        if audio is not None:
            out[name].audio = np.ascontiguousarray(audio[rows][:, None, :])  # (N_split, 1, d_a): one frame
            out[name].audio_lengths = np.ones(len(rows), dtype=np.int64)
    if audio is not None:
        _standardise(out, "audio")
    return out


def read_utterance_audio(
    path: str | os.PathLike, ids: list[str], *, dim: int = UTTERANCE_AUDIO_DIM, csv: str = "the CSV"
) -> np.ndarray:
    """One audio feature vector per id of ``ids``, (N, dim) float32, from a parquet of utterance vectors.

    The file (the shared MOSI ``audio.parquet``) has an ``id`` column and ``dim`` numeric feature
    columns (every other column, in the file's order); one row per id, extra rows ignored. Refused
    with one ``InputError`` line naming the file and the field: no ``id`` column, an empty or
    duplicated id, a feature column that is not numeric, a number of feature columns other than
    ``dim``, or ids of ``csv`` absent from the file (how many, and one). Non-finite values are
    replaced by 0 and counted in one warning (SPEC section 1). Values are returned as stored; the
    transcript reader then standardises them (``_standardise``).
    """
    path = Path(path)
    where = str(path)
    _require_file(path)
    try:
        df = pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(where, None, f"not a readable parquet file ({_describe(exc)})") from exc
    if "id" not in df.columns:
        raise InputError(where, "id", f"no such column; the file has: {_abbreviate(df.columns)}")
    columns = [c for c in df.columns if c != "id"]
    for c in columns:
        if not df[c].dtype.is_numeric():
            raise InputError(where, c, f"expected numbers, got dtype {df[c].dtype}")
    if len(columns) != dim:
        raise InputError(where, "features", f"{len(columns)} feature columns besides id, expected {dim} "
                                            "(data.audio_dim)")
    file_ids = df["id"].cast(pl.String)
    if file_ids.null_count() or (file_ids == "").any():
        row = int(np.argmax((file_ids.is_null() | (file_ids == "")).fill_null(True).to_numpy()))
        raise InputError(where, "id", f"empty id at row {row} (rows from 0)")
    duplicated = file_ids.is_duplicated()
    if duplicated.any():
        n_dup = file_ids.filter(duplicated).n_unique()
        raise InputError(where, "id", f"{n_dup} ids occur more than once, e.g. {file_ids.filter(duplicated)[0]!r}")
    row_of = {i: r for r, i in enumerate(file_ids.to_list())}
    absent = [i for i in ids if i not in row_of]
    if absent:
        raise InputError(where, "id", f"{len(absent)} of the {len(ids)} ids of {csv} are absent, "
                                      f"e.g. {absent[0]!r}")
    feats = df.select(columns).to_numpy().astype(np.float32)  # (rows of the file, dim)
    _replace_non_finite(where, f"{columns[0]}..{columns[-1]}", feats)
    return np.ascontiguousarray(feats[[row_of[i] for i in ids]])  # (N, dim), in the order of ids


def _standardise(splits: dict[str, Split], key: str) -> None:
    """Z-score each feature of ``key`` in place with the training split's mean and std over valid frames.

    Raw utterance features differ in scale by four orders of magnitude (the shared MOSI file: pitch
    near 200, many columns below 0.1, some constant), which a Transformer input layer reads badly.
    Training statistics only, so validation and test leak nothing; a constant feature becomes 0. The
    model sees an absent or dropped frame as zeros: after this, the mean frame.
    """
    train = splits["train"]
    valid = np.arange(getattr(train, key).shape[1])[None, :] < getattr(train, f"{key}_lengths")[:, None]  # (N, T)
    frames = getattr(train, key)[valid]  # (frames, d)
    mean, std = frames.mean(0), frames.std(0)
    scale = np.where(std > 0, std, 1.0)
    for split in splits.values():
        feats = getattr(split, key)
        mask = np.arange(feats.shape[1])[None, :] < getattr(split, f"{key}_lengths")[:, None]
        feats[mask] = ((feats[mask] - mean) / scale).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Shared checks


def _build_split(where: str, name: str, **fields: tuple[str, Any]) -> Split:
    """Check one split's arrays and assemble it; ``fields`` maps a Split field to (file's name, value)."""
    labels_field, labels = fields["labels"]
    labels = _numeric(where, labels_field, labels)
    if labels.ndim == 2 and labels.shape[1] == 1:  # some MMSA versions store (N, 1)
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise InputError(where, labels_field, f"expected shape (N,), got {labels.shape}")
    n = labels.shape[0]
    if n == 0:
        raise InputError(where, name, "empty split (0 samples)")
    bad = ~((labels >= LABEL_RANGE[0]) & (labels <= LABEL_RANGE[1]))
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(where, labels_field, f"label outside [-3, 3] at index {i}: {labels[i]}")

    def same_n(field: str, count: int) -> None:
        if count != n:
            raise InputError(where, field, f"has {count} samples but {labels_field} has {n}")

    text = _strings(where, *fields["text"])
    same_n(fields["text"][0], len(text))
    ids = _strings(where, *fields["ids"])
    same_n(fields["ids"][0], len(ids))

    modality = {}
    for key, dims in (("audio", AUDIO_DIMS), ("vision", VISION_DIMS)):
        field, value = fields[key]
        feats = _numeric(where, field, value)
        if feats.ndim != 3:
            raise InputError(where, field, f"expected a 3-D array (N, T, d), got shape {feats.shape}")
        same_n(field, feats.shape[0])
        if feats.shape[2] not in dims:
            raise InputError(where, field, f"feature width {feats.shape[2]} is not one of {dims}")
        if feats.shape[1] == 0:
            raise InputError(where, field, "has no frames (T = 0)")
        feats = np.ascontiguousarray(feats, dtype=np.float32)  # (N, T, d)
        lengths_field, lengths = fields[f"{key}_lengths"]
        if lengths is None:
            lengths = _derive_lengths(feats)
        else:
            lengths = _check_lengths(where, lengths_field, lengths, n, feats.shape[1])
        _replace_non_finite(where, field, feats)
        modality[key], modality[f"{key}_lengths"] = feats, lengths

    tokens = {}
    for key in ("text_ids", "text_mask"):
        field, value = fields[key]
        if value is None:
            tokens[key] = None
            continue
        arr = _numeric(where, field, value)
        if arr.ndim != 2:
            raise InputError(where, field, f"expected shape (N, T_l), got {arr.shape}")
        same_n(field, arr.shape[0])
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr) & (arr == np.round(arr))):
            raise InputError(where, field, "token ids and masks must be whole numbers")
        tokens[key] = arr.astype(np.int64)
    if tokens["text_ids"] is not None and tokens["text_ids"].shape != tokens["text_mask"].shape:
        raise InputError(
            where, fields["text_mask"][0], f"shape {tokens['text_mask'].shape} != ids {tokens['text_ids'].shape}"
        )

    return Split(name=name, text=text, labels=labels.astype(np.float32), ids=ids, **modality, **tokens)


def _require_file(path: Path) -> None:
    if not path.exists():
        raise InputError(str(path), None, "no such file")
    if not path.is_file():
        raise InputError(str(path), None, "not a file")


def _describe(exc: BaseException) -> str:
    """An exception as one line, so that every InputError message stays on one line."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _abbreviate(names: list[str], k: int = 6) -> str:
    return ", ".join(names[:k]) + (f", ... ({len(names)} columns)" if len(names) > k else "")


def _names(mapping: dict) -> str:
    return ", ".join(sorted(str(k) for k in mapping)) or "(none)"


def _numeric(where: str, field: str, value: Any) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except ValueError as exc:  # ragged nested lists
        raise InputError(where, field, f"not a rectangular array ({_describe(exc)})") from exc
    if arr.dtype.kind not in "biuf":
        raise InputError(where, field, f"expected numbers, got dtype {arr.dtype}")
    return arr


def _strings(where: str, field: str, value: Any) -> list[str]:
    arr = np.asarray(value)
    if arr.ndim != 1:
        raise InputError(where, field, f"expected one string per sample, shape (N,), got {arr.shape}")
    return [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in arr.tolist()]


def _derive_lengths(feats: np.ndarray) -> np.ndarray:
    """(N, T, d) -> (N,) frames up to the last frame with any non-zero value (NaN counts), at least 1."""
    data = np.any(feats != 0, axis=2)  # (N, T)
    last = feats.shape[1] - np.argmax(data[:, ::-1], axis=1)  # index of the last data frame, plus 1
    return np.where(data.any(axis=1), last, 1).astype(np.int64)


def _check_lengths(where: str, field: str, value: Any, n: int, frames: int) -> np.ndarray:
    lengths = _numeric(where, field, value)
    if lengths.shape != (n,):
        raise InputError(where, field, f"expected shape ({n},), one length per sample, got {lengths.shape}")
    bad = ~(np.isfinite(lengths) & (lengths == np.round(lengths)) & (lengths >= 0) & (lengths <= frames))
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(where, field, f"length not a whole number in [0, {frames}] at index {i}: {lengths[i]}")
    return np.maximum(lengths, 1).astype(np.int64)  # a sample with no frames keeps one zero frame


def _replace_non_finite(where: str, field: str, feats: np.ndarray) -> None:
    """Set NaN/inf in ``feats`` to 0 in place, in blocks of samples, and warn once with the count."""
    count = 0
    for start in range(0, feats.shape[0], _BLOCK):
        block = feats[start : start + _BLOCK]
        bad = ~np.isfinite(block)
        k = int(np.count_nonzero(bad))
        if k:
            block[bad] = 0.0
            count += k
    if count:
        warnings.warn(f"{where}: {field}: replaced {count} non-finite values by 0", stacklevel=4)
