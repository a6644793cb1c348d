"""Tests of fsrf.readers and studies/convert_mmsa.py on tiny files written in tmp_path, plus the real CSVs."""

from __future__ import annotations

import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, subprocess_env
from fsrf import readers
from fsrf.data import SPLITS
from fsrf.errors import InputError
from fsrf.readers import (
    convert_mmsa,
    read_mmsa,
    read_mmsa_npz,
    read_mmsa_pickle,
    read_transcripts,
)

SHARED_DATA = ROOT.parent / "shared" / "data"
SIZES = {"train": 4, "valid": 3, "test": 2}
T_A, T_V, T_L = 6, 5, 7


# --------------------------------------------------------------------------------------------------
# Fixture files


def mmsa_dict(*, dims: tuple[int, int] = (5, 20), lengths: bool = True, seed: int = 0) -> dict:
    """A tiny dict in MMSA's pickle layout; sample i of each split has true lengths set by its padding."""
    rng = np.random.default_rng(seed)
    data = {}
    for name, n in SIZES.items():
        part = {
            "text": rng.normal(size=(n, T_L, 8)).astype(np.float32),  # stands in for the ignored features
            "raw_text": np.array([f"{name} utterance {i}" for i in range(n)], dtype=object),
            "id": np.array([f"vid{i}$_${i + 1}" for i in range(n)], dtype=object),
            "regression_labels": np.linspace(-3, 3, n).astype(np.float32),  # both ends of the range
        }
        ids = rng.integers(100, 999, size=(n, T_L)).astype(np.float64)  # MMSA stores text_bert as floats
        mask = (np.arange(T_L) < rng.integers(2, T_L + 1, size=(n, 1))).astype(np.float64)
        part["text_bert"] = np.stack([ids * mask, mask, np.zeros_like(mask)], axis=1)  # (n, 3, T_L)
        for key, frames, width in (("audio", T_A, dims[0]), ("vision", T_V, dims[1])):
            feats = rng.normal(size=(n, frames, width)).astype(np.float32)
            true = rng.integers(1, frames + 1, size=n)
            feats[np.arange(frames) >= true[:, None]] = 0.0  # zero padding at the end
            part[key] = feats
            if lengths:
                part[f"{key}_lengths"] = true.astype(np.int64)
            else:
                part[f"_true_{key}_lengths"] = true  # for the test only; the reader ignores unknown keys
        data[name] = part
    return data


def write_pickle(path: Path, data) -> Path:
    path.write_bytes(pickle.dumps(data))
    return path


def safe_arrays(tmp_path: Path, **kwargs) -> dict[str, np.ndarray]:
    """The arrays of a correct .npz produced by the converter, to break one of them."""
    folder = tmp_path / "good"
    folder.mkdir(exist_ok=True)
    pkl = write_pickle(folder / "src.pkl", mmsa_dict(**kwargs))
    with np.load(convert_mmsa(pkl, folder / "src.npz", trust_pickle=True)) as z:
        return dict(z)


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


MOSI_LIKE = "id,text,label,mode\n" + "".join(
    f"v{i},utterance {i},{(-3 + i * 0.5):.1f},{mode}\n"
    for i, mode in enumerate(["train", "dev", "train", "test", "dev", "train", "test"])
)


def assert_same_split(a, b) -> None:
    assert a.name == b.name and a.text == b.text and a.ids == b.ids
    for key in ("labels", "audio", "audio_lengths", "vision", "vision_lengths", "text_ids", "text_mask"):
        x, y = getattr(a, key), getattr(b, key)
        assert x.dtype == y.dtype and x.shape == y.shape, key
        np.testing.assert_array_equal(x, y, err_msg=key)


# --------------------------------------------------------------------------------------------------
# MMSA pickles and the safe format


@pytest.mark.parametrize("dims", [(5, 20), (74, 35)])
@pytest.mark.parametrize("lengths", [True, False], ids=["with_lengths", "derived_lengths"])
def test_pickle_maps_to_split(tmp_path, dims, lengths):
    data = mmsa_dict(dims=dims, lengths=lengths)
    splits = read_mmsa_pickle(write_pickle(tmp_path / "aligned_50.pkl", data), trust_pickle=True)
    assert list(splits) == list(SPLITS)
    for name, split in splits.items():
        src, n = data[name], SIZES[name]
        assert split.name == name and len(split) == n
        assert split.text == list(src["raw_text"]) and split.ids == list(src["id"])
        assert split.labels.dtype == np.float32
        np.testing.assert_array_equal(split.labels, src["regression_labels"])
        assert split.audio.shape == (n, T_A, dims[0]) and split.audio.dtype == np.float32
        assert split.vision.shape == (n, T_V, dims[1]) and split.vision.dtype == np.float32
        np.testing.assert_array_equal(split.text_ids, src["text_bert"][:, 0].astype(np.int64))
        np.testing.assert_array_equal(split.text_mask, src["text_bert"][:, 1].astype(np.int64))
        assert split.text_ids.dtype == split.text_mask.dtype == np.int64
        for key in ("audio", "vision"):
            lengths_key = f"{key}_lengths" if lengths else f"_true_{key}_lengths"
            got = getattr(split, f"{key}_lengths")
            assert got.dtype == np.int64
            np.testing.assert_array_equal(got, src[lengths_key])
        assert split.modalities == ("l", "a", "v")


def test_derived_lengths_follow_the_last_non_zero_frame(tmp_path):
    data = mmsa_dict(lengths=False)
    audio = np.zeros((SIZES["train"], T_A, 5), dtype=np.float32)
    audio[0, :3] = 1.0
    audio[0, 1] = 0.0  # a silent frame inside the utterance is not padding
    audio[1, 4, 2] = -0.5  # one non-zero value is enough
    # audio[2] stays all zeros: length 1, not 0
    audio[3, 5, 0] = np.nan  # a non-finite value is data, not padding (then replaced by 0)
    data["train"]["audio"] = audio
    with pytest.warns(UserWarning, match="train/audio: replaced 1 non-finite"):
        split = read_mmsa_pickle(write_pickle(tmp_path / "a.pkl", data), trust_pickle=True)["train"]
    np.testing.assert_array_equal(split.audio_lengths, [3, 5, 1, 6])


def test_given_zero_length_becomes_one(tmp_path):
    data = mmsa_dict()
    data["valid"]["vision_lengths"][1] = 0
    split = read_mmsa_pickle(write_pickle(tmp_path / "a.pkl", data), trust_pickle=True)["valid"]
    assert split.vision_lengths[1] == 1


def test_text_bert_is_optional(tmp_path):
    data = mmsa_dict()
    for part in data.values():
        del part["text_bert"]
    split = read_mmsa_pickle(write_pickle(tmp_path / "a.pkl", data), trust_pickle=True)["test"]
    assert split.text_ids is None and split.text_mask is None


class _Payload:
    """Unpickling this creates a marker file: the code-execution risk the trust flag guards against."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_refused_without_trust(tmp_path):
    marker = tmp_path / "pickle_ran"
    path = write_pickle(tmp_path / "unaligned_50.pkl", {"train": _Payload(marker)})
    for read in (lambda: read_mmsa_pickle(path, trust_pickle=False), lambda: read_mmsa(path)):
        with pytest.raises(InputError) as info:
            read()
        message = str(info.value)
        assert message.startswith(f"{path}: ")
        assert "trust_pickle=True" in message and "convert_mmsa.py" in message and "\n" not in message
    assert not marker.exists()  # refused before unpickling
    with pytest.raises(InputError):
        read_mmsa_pickle(path, trust_pickle=True)  # trusted: it runs, then fails the checks
    assert marker.exists()


@pytest.mark.parametrize("dims", [(5, 20), (74, 35)])
@pytest.mark.parametrize("lengths", [True, False], ids=["with_lengths", "derived_lengths"])
def test_round_trip_pickle_to_npz(tmp_path, dims, lengths):
    pkl = write_pickle(tmp_path / "aligned_50.pkl", mmsa_dict(dims=dims, lengths=lengths, seed=3))
    out = convert_mmsa(pkl, tmp_path / "aligned_50.npz", trust_pickle=True)
    assert out == tmp_path / "aligned_50.npz"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aligned_50.npz", "aligned_50.pkl"]
    from_pickle = read_mmsa_pickle(pkl, trust_pickle=True)
    from_npz = read_mmsa(out)
    for name in SPLITS:
        assert_same_split(from_pickle[name], from_npz[name])
    with np.load(out, allow_pickle=False) as z:  # the layout, readable without pickle
        assert str(z["format"]) == readers.NPZ_FORMAT and str(z["source"]) == "aligned_50.pkl"
        assert z["train/text"].dtype.kind == "U" and z["train/ids"].dtype.kind == "U"
        assert z["valid/audio"].shape == (SIZES["valid"], T_A, dims[0])
        expected = {"format", "source"} | {
            f"{s}/{k}"
            for s in SPLITS
            for k in ("text", "ids", "labels", "audio", "audio_lengths", "vision", "vision_lengths",
                      "text_ids", "text_mask")
        }
        assert set(z.files) == expected


def test_non_finite_features_replaced_and_counted(tmp_path):
    data = mmsa_dict(dims=(74, 35))
    audio = data["train"]["audio"]
    audio[0, 0, :3] = np.nan
    audio[1, 0, 5] = -np.inf
    audio[2, 0, 7] = -np.inf
    audio[3, 0, 9] = np.inf  # 6 in train/audio
    data["valid"]["vision"][0, 0, :4] = np.nan  # 4 in valid/vision
    pkl = write_pickle(tmp_path / "unaligned_50.pkl", data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        splits = read_mmsa_pickle(pkl, trust_pickle=True)
    assert sorted(str(w.message) for w in caught) == [
        f"{pkl}: train/audio: replaced 6 non-finite values by 0",
        f"{pkl}: valid/vision: replaced 4 non-finite values by 0",
    ]
    assert np.isfinite(splits["train"].audio).all() and np.isfinite(splits["valid"].vision).all()
    assert (splits["train"].audio[0, 0, :3] == 0).all() and splits["train"].audio[3, 0, 9] == 0
    np.testing.assert_array_equal(splits["train"].audio[0, 0, 3:], audio[0, 0, 3:])  # the rest untouched

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = convert_mmsa(pkl, tmp_path / "unaligned_50.npz", trust_pickle=True)
    assert len(caught) == 2  # the conversion reports the same replacements
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the safe file is already clean: nothing to warn about
        from_npz = read_mmsa_npz(out)
    assert_same_split(from_npz["train"], splits["train"])


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    pkl = write_pickle(tmp_path / "aligned_50.pkl", mmsa_dict())
    out = tmp_path / "aligned_50.npz"
    out.write_bytes(b"previous version")

    def broken_savez(fh, **arrays):
        fh.write(b"PK\x03\x04 half an archive")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(readers.np, "savez", broken_savez)
    with pytest.raises(InputError, match="aligned_50.npz: cannot write .*No space left"):
        convert_mmsa(pkl, out, trust_pickle=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aligned_50.npz", "aligned_50.pkl"]
    assert out.read_bytes() == b"previous version"


# --------------------------------------------------------------------------------------------------
# Transcripts


def test_transcripts_split_mapping_and_ids(tmp_path):
    splits = read_transcripts(write_csv(tmp_path / "label.csv", MOSI_LIKE))
    assert list(splits) == list(SPLITS)
    assert splits["train"].ids == ["v0", "v2", "v5"]
    assert splits["valid"].ids == ["v1", "v4"]  # "dev" -> "valid", file order kept
    assert splits["test"].ids == ["v3", "v6"]
    assert splits["valid"].text == ["utterance 1", "utterance 4"]
    np.testing.assert_array_equal(splits["valid"].labels, np.array([-2.5, -1.0], dtype=np.float32))
    assert splits["train"].labels.dtype == np.float32
    assert splits["test"].audio is None and splits["test"].vision is None
    assert splits["test"].modalities == ("l",)


def test_transcripts_ids_from_video_and_clip_or_row(tmp_path):
    mosei = "video_id,clip_id,text,label,mode\nA,007,Hi.,1.0,train\nA,8_9,Yes.,-0.6666667,valid\nB,1,No.,3,test\n"
    splits = read_transcripts(write_csv(tmp_path / "mosei.csv", mosei))
    assert splits["train"].ids == ["A$_$007"] and splits["valid"].ids == ["A$_$8_9"]
    assert splits["valid"].labels[0] == np.float32(-0.6666667)
    custom = "sentence,score,part\nhi,1,train\nho,2,valid\nha,-3,test\nhu,0,train\n"
    splits = read_transcripts(
        write_csv(tmp_path / "custom.csv", custom), text_column="sentence", label_column="score", split_column="part"
    )
    assert splits["train"].ids == ["0", "3"] and splits["train"].text == ["hi", "hu"]


# --------------------------------------------------------------------------------------------------
# Bad inputs: every one an InputError naming the file and the field


def _mmsa_mutation(change):
    def write(path: Path) -> None:
        data = mmsa_dict()
        change(data)
        write_pickle(path, data)

    return write


def _set(split: str, key: str, value):
    def change(data):
        data[split][key] = value(data[split]) if callable(value) else value

    return change


def _del(*keys: str):
    def change(data):
        target = data
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]

    return change


def _label(split: str, index: int, value: float):
    def change(data):
        data[split]["regression_labels"][index] = value

    return change


def _empty_test(data):
    data["test"] = {k: v[:0] for k, v in data["test"].items()}


def _npz_mutation(change):
    def write(path: Path) -> None:
        arrays = safe_arrays(path.parent)
        change(arrays)
        np.savez(path, **arrays)

    return write


def _truncated_npz(path: Path) -> None:
    np.savez(path, **safe_arrays(path.parent))
    path.write_bytes(path.read_bytes()[:200])


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x00\x01 this is not what the suffix says \xff")


def _truncated_pickle(path: Path) -> None:
    path.write_bytes(pickle.dumps(mmsa_dict())[:300])


def _csv(text: str):
    return lambda path: write_csv(path, text)


def _pkl(path):
    return read_mmsa_pickle(path, trust_pickle=True)


N_TRAIN = SIZES["train"]
BAD_INPUTS = [
    # (id, file name, writer or None for a missing file, reader, fragments of the message)
    ("pkl_missing_file", "nope.pkl", None, _pkl, ["nope.pkl: no such file"]),
    ("pkl_garbage", "bad.pkl", _garbage, _pkl, ["bad.pkl: not a readable pickle"]),
    ("pkl_truncated", "bad.pkl", _truncated_pickle, _pkl, ["bad.pkl: not a readable pickle"]),
    ("pkl_not_a_dict", "bad.pkl", lambda p: write_pickle(p, [1, 2]), _pkl, ["bad.pkl: expected a dict"]),
    ("pkl_missing_split", "bad.pkl", _mmsa_mutation(_del("valid")), _pkl,
     ["bad.pkl: valid: missing split", "test, train"]),
    ("pkl_missing_labels", "bad.pkl", _mmsa_mutation(_del("train", "regression_labels")), _pkl,
     ["bad.pkl: train/regression_labels: missing key", "audio"]),
    ("pkl_missing_vision", "bad.pkl", _mmsa_mutation(_del("test", "vision")), _pkl,
     ["bad.pkl: test/vision: missing key"]),
    ("audio_not_3d", "bad.pkl", _mmsa_mutation(_set("train", "audio", lambda s: s["audio"][:, :, 0])), _pkl,
     ["bad.pkl: train/audio: expected a 3-D array", f"({N_TRAIN}, {T_A})"]),
    ("audio_width", "bad.pkl", _mmsa_mutation(_set("train", "audio", np.zeros((N_TRAIN, T_A, 6)))), _pkl,
     ["bad.pkl: train/audio: feature width 6 is not one of (5, 74)"]),
    ("vision_width", "bad.pkl", _mmsa_mutation(_set("valid", "vision", np.zeros((3, T_V, 21)))), _pkl,
     ["bad.pkl: valid/vision: feature width 21 is not one of (20, 35)"]),
    ("audio_count", "bad.pkl", _mmsa_mutation(_set("train", "audio", lambda s: s["audio"][:-1])), _pkl,
     [f"bad.pkl: train/audio: has {N_TRAIN - 1} samples but train/regression_labels has {N_TRAIN}"]),
    ("raw_text_count", "bad.pkl", _mmsa_mutation(_set("test", "raw_text", np.array(["only one"]))), _pkl,
     ["bad.pkl: test/raw_text: has 1 samples but test/regression_labels has 2"]),
    ("text_bert_shape", "bad.pkl", _mmsa_mutation(_set("train", "text_bert", lambda s: s["text_bert"][:, :2])),
     _pkl, ["bad.pkl: train/text_bert: expected shape (N, 3, T_l)", f"({N_TRAIN}, 2, {T_L})"]),
    ("text_bert_count", "bad.pkl", _mmsa_mutation(_set("train", "text_bert", lambda s: s["text_bert"][:2])),
     _pkl, ["bad.pkl: train/text_bert: has 2 samples"]),
    ("label_too_high", "bad.pkl", _mmsa_mutation(_label("train", 2, 3.5)), _pkl,
     ["bad.pkl: train/regression_labels: label outside [-3, 3] at index 2: 3.5"]),
    ("label_nan", "bad.pkl", _mmsa_mutation(_label("valid", 1, np.nan)), _pkl,
     ["bad.pkl: valid/regression_labels: label outside [-3, 3] at index 1: nan"]),
    ("labels_not_numbers", "bad.pkl",
     _mmsa_mutation(_set("train", "regression_labels", np.array(["1"] * N_TRAIN, dtype=object))), _pkl,
     ["bad.pkl: train/regression_labels: expected numbers, got dtype object"]),
    ("empty_split", "bad.pkl", _mmsa_mutation(_empty_test), _pkl, ["bad.pkl: test: empty split (0 samples)"]),
    ("length_too_long", "bad.pkl",
     _mmsa_mutation(_set("train", "audio_lengths", np.array([T_A + 1, 1, 1, 1]))), _pkl,
     [f"bad.pkl: train/audio_lengths: length not a whole number in [0, {T_A}] at index 0: {T_A + 1}"]),
    ("npz_missing_file", "nope.npz", None, read_mmsa_npz, ["nope.npz: no such file"]),
    ("npz_garbage", "bad.npz", _garbage, read_mmsa_npz, ["bad.npz: not an .npz archive"]),
    ("npz_truncated", "bad.npz", _truncated_npz, read_mmsa_npz, ["bad.npz: not a readable .npz archive"]),
    ("npz_missing_key", "bad.npz", _npz_mutation(_del("valid/labels")), read_mmsa_npz,
     ["bad.npz: valid/labels: missing key", "valid/audio"]),
    ("npz_object_array", "bad.npz",
     _npz_mutation(lambda a: a.update({"train/text": np.array(["x"] * N_TRAIN, dtype=object)})), read_mmsa_npz,
     ["bad.npz: train/text: holds Python objects"]),
    ("npz_vision_width", "bad.npz", _npz_mutation(lambda a: a.update({"test/vision": np.zeros((2, T_V, 3))})),
     read_mmsa_npz, ["bad.npz: test/vision: feature width 3 is not one of (20, 35)"]),
    ("npz_label_low", "bad.npz", _npz_mutation(lambda a: a["test/labels"].__setitem__(1, -3.25)), read_mmsa_npz,
     ["bad.npz: test/labels: label outside [-3, 3] at index 1: -3.25"]),
    ("unknown_suffix", "data.h5", _garbage, read_mmsa, ["data.h5: unknown suffix '.h5'"]),
    ("csv_missing_file", "nope.csv", None, read_transcripts, ["nope.csv: no such file"]),
    ("csv_ragged", "bad.csv", _csv("id,text,label,mode\na,b,1,train,extra\n"), read_transcripts,
     ["bad.csv: not a readable CSV"]),
    ("csv_empty_file", "bad.csv", _csv(""), read_transcripts, ["bad.csv: not a readable CSV"]),
    ("csv_header_only", "bad.csv", _csv("id,text,label,mode\n"), read_transcripts, ["bad.csv: no data rows"]),
    ("csv_unknown_text_column", "bad.csv", _csv(MOSI_LIKE),
     lambda p: read_transcripts(p, text_column="sentence"),
     ["bad.csv: sentence: no such column; the file has: id, text, label, mode"]),
    ("csv_missing_label_column", "bad.csv", _csv("text,mode\nhi,train\n"), read_transcripts,
     ["bad.csv: label: no such column; the file has: text, mode"]),
    ("csv_unknown_splits", "bad.csv", _csv(MOSI_LIKE + "x,y,0,holdout\nz,w,1,Train\nq,r,1,holdout\n"),
     read_transcripts, ["bad.csv: mode: unknown split names 'Train' (1 rows), 'holdout' (2 rows)"]),
    ("csv_label_out_of_range", "bad.csv", _csv("text,label,mode\na,1,train\nb,-2,dev\nc,0,test\nd,4.0,test\n"),
     read_transcripts, ["bad.csv: label: label not a number in [-3, 3] at row 3 (data rows from 0): '4.0'"]),
    ("csv_label_not_a_number", "bad.csv", _csv("text,label,mode\na,1,train\nb,abc,dev\nc,0,test\n"),
     read_transcripts, ["bad.csv: label: label not a number in [-3, 3] at row 1 (data rows from 0): 'abc'"]),
    ("csv_empty_split", "bad.csv", _csv("text,label,mode\na,1,train\nb,2,dev\n"), read_transcripts,
     ["bad.csv: mode: empty split: no rows for 'test'"]),
    ("csv_empty_text", "bad.csv", _csv("text,label,mode\na,1,train\nb,2,dev\n,0,test\n"), read_transcripts,
     ["bad.csv: text: empty text at row 2 (data rows"]),
]


@pytest.mark.parametrize(
    "file_name, write, read, fragments", [pytest.param(*case[1:], id=case[0]) for case in BAD_INPUTS]
)
def test_bad_input_is_one_line_input_error(tmp_path, file_name, write, read, fragments):
    path = tmp_path / file_name
    if write is not None:
        write(path)
    with pytest.raises(InputError) as info:
        read(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(tmp_path))  # the file, as the caller named it
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


# --------------------------------------------------------------------------------------------------
# The converter's command line


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "studies/convert_mmsa.py", *args], cwd=ROOT, env=subprocess_env(), capture_output=True,
        text=True, timeout=60,
    )


def test_cli_bad_file_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "aligned_50.pkl"
    _truncated_pickle(bad)
    result = run_cli(str(bad), "--trust-pickle")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: {bad}: not a readable pickle")
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert [p.name for p in tmp_path.iterdir()] == ["aligned_50.pkl"]  # no output, no temp file

    untrusted = write_pickle(tmp_path / "good.pkl", mmsa_dict())
    result = run_cli(str(untrusted), "--out", str(tmp_path / "good.npz"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "--trust-pickle" in result.stderr and not (tmp_path / "good.npz").exists()


def test_cli_converts(tmp_path):
    data = mmsa_dict()
    data["test"]["audio"][0, 0, 0] = -np.inf
    pkl = write_pickle(tmp_path / "unaligned_50.pkl", data)
    result = run_cli(str(pkl), "--trust-pickle")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "unaligned_50.npz"
    assert result.stdout.strip() == f"wrote {out}"
    assert result.stderr == f"warning: {pkl}: test/audio: replaced 1 non-finite values by 0\n"
    assert read_mmsa(out)["test"].audio[0, 0, 0] == 0


# --------------------------------------------------------------------------------------------------
# The real transcripts (not shipped with the project)

REAL = {
    "mosi": {"train": 1281, "valid": 229, "test": 685},
    "mosei": {"train": 16274, "valid": 1861, "test": 4653},
}


@pytest.mark.parametrize("dataset", sorted(REAL))
def test_real_transcripts(dataset):
    path = SHARED_DATA / dataset / "label.csv"
    if not path.is_file():
        pytest.skip(f"{path} is absent: the real transcripts live outside the project (shared/data/README.md)")
    splits = read_transcripts(path)
    assert {name: len(split) for name, split in splits.items()} == REAL[dataset]
    for split in splits.values():
        assert split.labels.min() >= -3 and split.labels.max() <= 3
        assert len(split.text) == len(split.ids) == len(split)
        assert all(split.text)
    all_ids = [i for split in splits.values() for i in split.ids]
    assert len(set(all_ids)) == len(all_ids)  # ids identify samples across splits
    if dataset == "mosei":
        assert all("$_$" in i for i in all_ids)
