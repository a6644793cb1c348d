"""Text plus one real audio vector per utterance (``data.audio_path``, issue 14 item 3): the reader on tiny
files written in tmp_path and on the shared MOSI files, the protocol of (l, a) data, and a tiny real fit."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from conftest import ROOT
from fsrf.config import load_config
from fsrf.errors import InputError
from fsrf.protocol import HEADLINE, complete_condition, conditions_for, per_modality_conditions, shuffled_controls
from fsrf.readers import read_transcripts

SHARED = ROOT.parent / "shared" / "data" / "mosi"
LABELS, AUDIO = SHARED / "label.csv", SHARED / "audio.parquet"
DIM = 4  # feature columns of the tiny files

CSV = "id,text,label,mode\nv_1,it was good,2.0,train\nv_2,bad,-1.5,train\nv_3,fine,0.4,train\n" \
      "v_4,meh,-0.2,dev\nv_5,great,3.0,test\nv_6,awful,-3.0,test\n"
IDS = ["v_1", "v_2", "v_3", "v_4", "v_5", "v_6"]


def feature_frame(ids=IDS, dim: int = DIM, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    cols = {f"a{k:02d}": rng.normal(size=len(ids)).astype(np.float32) for k in range(dim)}
    return pl.DataFrame({"id": list(ids), **cols})


def write(tmp_path: Path, frame: pl.DataFrame) -> tuple[Path, Path]:
    csv, parquet = tmp_path / "label.csv", tmp_path / "audio.parquet"
    csv.write_text(CSV)
    frame.write_parquet(parquet)
    return csv, parquet


def test_features_join_by_id_as_one_standardised_frame(tmp_path):
    frame = feature_frame()
    frame = pl.concat([frame[::-1], feature_frame(["extra"], seed=1)])  # another order, an id the CSV lacks
    csv, parquet = write(tmp_path, frame)
    splits = read_transcripts(csv, audio_path=parquet, audio_dim=DIM)
    raw = feature_frame().drop("id").to_numpy()  # (6, DIM) in the CSV's order
    train = raw[:3]
    mean, std = train.mean(0), train.std(0)
    rows = {"train": [0, 1, 2], "valid": [3], "test": [4, 5]}
    for name, split in splits.items():
        assert split.modalities == ("l", "a")
        assert split.audio.shape == (len(rows[name]), 1, DIM) and split.audio.dtype == np.float32
        assert split.audio_lengths.tolist() == [1] * len(rows[name]) and split.audio_lengths.dtype == np.int64
        assert split.ids == [IDS[i] for i in rows[name]]
        np.testing.assert_allclose(split.audio[:, 0], (raw[rows[name]] - mean) / std, rtol=1e-5, atol=1e-6)
    assert read_transcripts(csv).get("train").audio is None  # without audio_path: text only


def test_constant_feature_becomes_zero_and_non_finite_values_are_counted(tmp_path):
    frame = feature_frame().with_columns(a01=pl.lit(7.0, dtype=pl.Float32))
    frame = frame.with_columns(a02=pl.Series([np.nan, 1.0, np.inf, 0.0, -np.inf, 2.0], dtype=pl.Float32))
    csv, parquet = write(tmp_path, frame)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        splits = read_transcripts(csv, audio_path=parquet, audio_dim=DIM)
    assert [str(w.message) for w in caught] == [f"{parquet}: a00..a03: replaced 3 non-finite values by 0"]
    assert all(np.all(s.audio[:, 0, 1] == 0) for s in splits.values())  # constant: std 0, scale 1, minus mean
    assert all(np.isfinite(s.audio).all() for s in splits.values())


def _frame(change):
    return lambda tmp_path: write(tmp_path, change(feature_frame()))


BAD = [
    ("absent_ids", _frame(lambda f: f.filter(~pl.col("id").is_in(["v_2", "v_5"]))),
     ["audio.parquet: id: 2 of the 6 ids of", "label.csv are absent, e.g. 'v_2'"]),
    ("too_few_columns", _frame(lambda f: f.drop("a03")),
     ["audio.parquet: features: 3 feature columns besides id, expected 4 (data.audio_dim)"]),
    ("too_many_columns", _frame(lambda f: f.with_columns(a04=pl.col("a00"))),
     ["audio.parquet: features: 5 feature columns besides id, expected 4"]),
    ("text_column", _frame(lambda f: f.with_columns(a02=pl.lit("x"))),
     ["audio.parquet: a02: expected numbers, got dtype String"]),
    ("duplicate_ids", _frame(lambda f: pl.concat([f, f[3:4], f[3:4], f[0:1]])),
     ["audio.parquet: id: 2 ids occur more than once, e.g. 'v_1'"]),
    ("no_id_column", _frame(lambda f: f.rename({"id": "clip"})),
     ["audio.parquet: id: no such column; the file has: clip, a00"]),
    ("empty_id", _frame(lambda f: f.with_columns(id=pl.Series(["v_1", None, *IDS[2:]]))),
     ["audio.parquet: id: empty id at row 1"]),
    ("not_parquet", lambda tmp_path: (write(tmp_path, feature_frame())[0],
                                      (tmp_path / "audio.parquet").write_text("id,a00\n") and None),
     ["audio.parquet: not a readable parquet file"]),
]


@pytest.mark.parametrize("make, fragments", [pytest.param(*case[1:], id=case[0]) for case in BAD])
def test_bad_audio_file_is_one_line_input_error(tmp_path, make, fragments):
    make(tmp_path)
    with pytest.raises(InputError) as info:
        read_transcripts(tmp_path / "label.csv", audio_path=tmp_path / "audio.parquet", audio_dim=DIM)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(tmp_path))
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_csv_without_ids_cannot_be_joined(tmp_path):
    _, parquet = write(tmp_path, feature_frame())
    csv = tmp_path / "noid.csv"
    csv.write_text("text,label,mode\na,1,train\nb,0,dev\nc,-1,test\n")
    with pytest.raises(InputError, match=r"noid\.csv: id: no id column \(nor video_id and clip_id\) to join"):
        read_transcripts(csv, audio_path=parquet, audio_dim=DIM)


def test_audio_path_needs_the_transcripts_source():
    with pytest.raises(InputError, match="data.audio_path is read with data.source=transcripts only"):
        load_config(None, ["data.audio_path=x.parquet"])


def test_protocol_of_text_with_audio():
    la = ("l", "a")
    assert [c.name for c in conditions_for(la, burst=False) if c.kind == "table"] == ["l", "a", "la"]
    assert complete_condition(la).name == "la"
    assert complete_condition(("l",)).name == "l" and complete_condition(("l", "a", "v")).name == "lav"
    curves = [c.name for c in per_modality_conditions(la)]
    assert curves[0] == "intra_l_0.1" and curves[-1] == "intra_a_1.0" and len(curves) == 20
    assert [c.name for c in shuffled_controls(la)] == ["l_shuffled_l", "a_shuffled_a", "la_shuffled_l",
                                                       "la_shuffled_a"]


# --------------------------------------------------------------------------------------------------
# The shared MOSI files (not shipped with the project)

needs_shared = pytest.mark.skipif(not (LABELS.is_file() and AUDIO.is_file()),
                                  reason=f"{SHARED} lacks label.csv or audio.parquet: the real MOSI files live "
                                         "outside the project (shared/data/README.md)")


@needs_shared
def test_real_mosi_text_with_audio():
    splits = read_transcripts(LABELS, audio_path=AUDIO)
    text_only = read_transcripts(LABELS)
    assert {name: len(s) for name, s in splits.items()} == {"train": 1281, "valid": 229, "test": 685}
    file = pl.read_parquet(AUDIO)
    raw = dict(zip(file["id"].to_list(), file.drop("id").to_numpy()))
    for name, split in splits.items():
        assert split.ids == text_only[name].ids  # aligned to label.csv's rows
        assert split.audio.shape == (len(split), 1, 73) and set(split.audio_lengths.tolist()) == {1}
        assert np.isfinite(split.audio).all()
    train = splits["train"]
    assert np.abs(train.audio[:, 0].mean(0)).max() < 1e-4  # standardised with training statistics
    # the join: feature rows follow the ids (the standardisation is affine per column, so order survives)
    a00 = np.array([raw[i][0] for i in train.ids])
    assert np.corrcoef(a00, train.audio[:, 0, 0])[0, 1] > 0.9999


@needs_shared
def test_tiny_fit_on_real_text_with_audio(tmp_path, tiny_bert_dir):
    """A tiny real fit on a slice of MOSI (l, a): the audio encoder trains, the (l, a) conditions, the
    per-modality curves and the shuffled floor are reported, and eq (1) sees two modalities."""
    from fsrf.train import fit

    labels = pl.read_csv(LABELS, infer_schema_length=0)
    part = pl.concat([labels.filter(pl.col("mode") == m).head(k) for m, k in (("train", 96), ("dev", 32),
                                                                               ("test", 48))])
    csv = tmp_path / "slice.csv"
    part.write_csv(csv)
    cfg = load_config(ROOT / "configs" / "mosi_text_audio.yaml", [
        f"data.path={csv}", f"data.audio_path={AUDIO}", f"encoder.path={tiny_bert_dir}",
        f"encoder.cache_dir={tmp_path / 'cache'}", "train.epochs=1", "train.batch_size=16", "train.threads=1",
        "model.width=16", "model.seq_width=8", "eval.health_every=0"])
    result = fit(cfg, log=lambda s: None)
    assert result.prepared.modalities == ("l", "a")
    test = result.test
    for name in ("l", "a", "la", "intra_0.5", "intra_a_0.5", "intra_l_0.5", "rates_l0.9_a0.3_v0.0",
                 "objective", "la_shuffled_a", "a_shuffled_a", "la_shuffled_l", "l_shuffled_l"):
        assert math.isfinite(test[f"test/{HEADLINE}/{name}"]), name
    assert f"test/{HEADLINE}/avg_missing" not in test and f"test/{HEADLINE}/lav" not in test
    objective = np.mean([test[f"test/{HEADLINE}/{c}"] for c in ("l", "a", "la")] +
                        [test[f"test/{HEADLINE}/intra_{p}"] for p in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8,
                                                                        0.9, 1.0)])
    assert test[f"test/{HEADLINE}/objective"] == pytest.approx(objective, abs=1e-12)
    assert test["test/MAE/a"] != test["test/MAE/l"]  # the audio reaches the score
    assert result.history[0]["train/dhf/contrastive"] > 0  # eq (1) has pairs of present modalities
    assert any("of Table I only l, a, la" in note for note in result.notes)
