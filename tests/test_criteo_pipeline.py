"""Criteo-format TSVs end to end: streamed ETL, schema, saved workflow, DLRM on the planted signal,
file split and CLI, Great Expectations row suite with quarantine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from etl.criteo import (CriteoEtlConfig, CriteoRowsRejected, count_rows, generate_criteo_tsv,
                        main as criteo_cli, run_criteo_etl)
from etl.readers import CRITEO_DENSE, CRITEO_SPARSE, iter_criteo
from etl.workflow import Workflow
from models.saved import load_model
from training import TrainConfig, TrainInputs, train
from training.data import load_schema, load_split
from training.metrics import auc
from training.trainer import predict

ROWS = 30_000
# Chunks smaller than the file, not aligned with the 80/10/10 boundaries: rows cross splits mid-chunk.
CONFIG = CriteoEtlConfig(freq_threshold=3, oov_buckets=16, chunk_rows=7_000)


@pytest.fixture(scope="module")
def tsv(tmp_path_factory) -> Path:
    return generate_criteo_tsv(tmp_path_factory.mktemp("criteo") / "train.tsv.gz", ROWS, seed=1)


@pytest.fixture(scope="module")
def raw(tsv) -> pd.DataFrame:
    return pd.concat(list(iter_criteo(tsv)), ignore_index=True)


@pytest.fixture(scope="module")
def etl(tsv, tmp_path_factory):
    return run_criteo_etl([tsv], tmp_path_factory.mktemp("etl"), CONFIG)


def test_generated_tsv_looks_like_criteo(tsv, raw):
    assert count_rows(tsv) == ROWS == len(raw)
    assert list(raw.columns) == ["label", *CRITEO_DENSE, *CRITEO_SPARSE]
    assert set(raw["label"].unique()) == {0, 1} and 0.15 < raw["label"].mean() < 0.4
    assert raw["I1"].isna().mean() > 0.3 and raw["I2"].notna().all() and (raw["I2"] < 0).any()
    hex_values = raw["C3"].dropna()
    assert hex_values.str.fullmatch(r"[0-9a-f]{8}").all()
    counts = hex_values.value_counts()
    assert counts.iloc[0] > 20 * counts.median()  # Zipf: a head value dwarfs the typical one


def test_last_tenth_of_rows_is_test_and_the_tenth_before_valid(etl, raw):
    assert etl.rows == {"train": 24_000, "valid": 3_000, "test": 3_000}
    for split, rows in (("train", raw[:24_000]), ("valid", raw[24_000:27_000]), ("test", raw[27_000:])):
        written = pd.read_parquet(getattr(etl, f"{split}_dir"))
        np.testing.assert_array_equal(written["label"].to_numpy(), rows["label"].to_numpy())
        assert sorted(p.name for p in getattr(etl, f"{split}_dir").iterdir())[0] == "part-00000.parquet"
    assert not (etl.schema_path.parent / "_staging").exists()


def test_schema_has_26_categoricals_with_train_cardinalities_and_13_continuous(etl, raw):
    schema = json.loads(etl.schema_path.read_text())
    assert schema["categorical"] == CRITEO_SPARSE and schema["continuous"] == CRITEO_DENSE
    assert schema["target"] == "label"
    specs = {c["name"]: c for c in schema["columns"]}
    assert specs["label"] == {"name": "label", "tags": ["target"], "dtype": "float32"}
    train = raw[:24_000]
    test = pd.read_parquet(etl.test_dir)
    for name in CRITEO_SPARSE:
        counts = train[name].value_counts()
        kept = int((counts >= CONFIG.freq_threshold).sum())
        assert specs[name]["cardinality"] == 1 + CONFIG.oov_buckets + kept, name
        assert specs[name]["embedding_dim"] == CONFIG.embedding_dim
        assert test[name].between(0, specs[name]["cardinality"] - 1).all()
    for name in CRITEO_DENSE:
        assert specs[name]["dtype"] == "float32" and "continuous" in specs[name]["tags"]
        assert np.isfinite(test[name]).all()
    # The most frequent train value of C3 gets the first code after the OOV buckets.
    top = train["C3"].value_counts().index[0]
    encoded_train = pd.read_parquet(etl.train_dir)
    assert (encoded_train.loc[(train["C3"] == top).to_numpy(), "C3"] == 1 + CONFIG.oov_buckets).all()
    assert (encoded_train.loc[train["C3"].isna().to_numpy(), "C3"] == 0).all()


def test_saved_workflow_encodes_raw_rows_like_the_written_test_split(etl, raw):
    serving = Workflow.load(etl.workflow_dir).transform(raw[27_000:].drop(columns="label"))
    written = pd.read_parquet(etl.test_dir)
    pd.testing.assert_frame_equal(serving.reset_index(drop=True),
                                  written[serving.columns].reset_index(drop=True))


def test_dlrm_learns_the_planted_click_signal(etl, tmp_path):
    config = TrainConfig(epochs=2, batch_size=2048, embedding_dim=8, lr=3e-3, embedding_lr=0.1,
                         device="cpu", seed=0)
    result = train(TrainInputs(etl.train_dir, etl.valid_dir, etl.schema_path), config, tmp_path)
    schema = load_schema(etl.schema_path)
    assert schema.n_dense == 13 and len(schema.cardinalities) == 26
    test = load_split(etl.test_dir, schema)
    test_auc = auc(test.label.numpy(), predict(load_model(result.model_path), test))
    assert result.best_valid_auc > 0.7
    assert test_auc > 0.7, test_auc


def test_cli_splits_by_file_order(tmp_path, capsys):
    files = [generate_criteo_tsv(tmp_path / f"day_{d}.tsv", 400 + 100 * d, seed=d) for d in range(3)]
    assert criteo_cli(["--input", *map(str, files), "--out", str(tmp_path / "out"),
                       "--split", "files", "--freq-threshold", "2"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["rows"] == {"train": 400, "valid": 500, "test": 600}
    schema = json.loads((tmp_path / "out" / "schema.json").read_text())
    assert schema["split"]["files"]["test"] == [str(files[2])]
    assert criteo_cli(["--input", str(files[0]), "--out", str(tmp_path / "x"), "--split", "files"]) == 2
    assert "at least 3 input files" in capsys.readouterr().err


def test_rows_failing_the_criteo_suite_are_quarantined_and_too_many_fail_closed(tmp_path):
    path = generate_criteo_tsv(tmp_path / "clicks.tsv", 1_000, seed=3)
    lines = path.read_text().splitlines()

    def corrupt(row: int, field: int, value: str) -> None:
        fields = lines[row].split("\t")
        fields[field] = value
        lines[row] = "\t".join(fields)

    corrupt(10, 0, "2")  # label
    corrupt(20, 5, "-4")  # I5
    corrupt(950, 3, "1.5")  # I3, in the test tenth
    path.write_text("\n".join(lines) + "\n")

    out = run_criteo_etl([path], tmp_path / "ok", CriteoEtlConfig(validate=True))
    assert out.rows == {"train": 798, "valid": 100, "test": 99}
    quarantined = pd.read_parquet(tmp_path / "ok" / "quarantine" / "rows.parquet")
    assert dict(zip(quarantined["_row"], quarantined["_reason"])) == {
        10: "label_not_binary", 20: "I5_negative", 950: "I3_not_int"}
    report = json.loads((tmp_path / "ok" / "validation.json").read_text())
    assert report["n_in"] == 1_000 and report["n_quarantined"] == 3
    assert (tmp_path / "ok" / "data_docs" / "index.html").is_file()

    with pytest.raises(CriteoRowsRejected, match="3 of 1000 Criteo rows"):
        run_criteo_etl([path], tmp_path / "strict",
                       CriteoEtlConfig(validate=True, bad_row_threshold=0.001))
    assert not (tmp_path / "strict" / "train").exists()
    assert (tmp_path / "strict" / "quarantine" / "rows.parquet").is_file()
