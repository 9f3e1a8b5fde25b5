"""The ETL stage end to end on synthetic events: splits, schema, serving-time equality, Dask
distributed scheduler, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from etl.__main__ import main as etl_cli
from etl.errors import SplitError
from etl.pipeline import EtlConfig, run_etl
from etl.readers import read_rees46
from etl.synthetic import SyntheticConfig, generate, impressions_from_events, write_events
from etl.workflow import Workflow

SYNTH = SyntheticConfig(n_events=24_000, days=4, seed=5, start_date="2026-04-01",
                        n_users=300, n_products=120)
CONFIG = EtlConfig(freq_threshold=3, oov_buckets=4)


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("raw")
    write_events(generate(SYNTH).events, out)
    return out


@pytest.fixture(scope="module")
def etl(raw, tmp_path_factory):
    return run_etl(raw, tmp_path_factory.mktemp("etl"), CONFIG)


def _split(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path)


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(list(df.columns)).reset_index(drop=True)


def test_last_day_is_test_the_day_before_valid_and_rows_match_impressions(raw, etl):
    assert etl.split_days == {"train": ["2026-04-01", "2026-04-02"], "valid": ["2026-04-03"],
                              "test": ["2026-04-04"]}
    events = read_rees46(raw)
    imp = impressions_from_events(events)
    first_day = events.groupby(["user_session", "product_id"])["event_time"].min().dt.day
    expected = first_day.map({1: "train", 2: "train", 3: "valid", 4: "test"}).value_counts()
    assert etl.rows == expected.to_dict()
    for split, path in (("train", etl.train_dir), ("valid", etl.valid_dir), ("test", etl.test_dir)):
        frame = _split(path)
        assert len(frame) == etl.rows[split]
        assert all(p.name.startswith("part-") for p in path.glob("*.parquet"))
    total_labels = sum(_split(p)["label"].sum() for p in (etl.train_dir, etl.valid_dir, etl.test_dir))
    assert total_labels == imp["label"].sum()


def test_schema_lists_columns_with_cardinalities_that_bound_the_data(etl):
    schema = json.loads(etl.schema_path.read_text())
    assert schema["categorical"] == ["user_id", "product_id", "category_id", "brand"]
    assert schema["target"] == "label"
    assert {"price", "user_id_count", "product_id_count", "te_user_id_purchased"} <= set(
        schema["continuous"])
    specs = {c["name"]: c for c in schema["columns"]}
    train = _split(etl.train_dir)
    frames = [train, _split(etl.valid_dir), _split(etl.test_dir)]
    for name in schema["categorical"]:
        assert specs[name]["dtype"] == "int64" and specs[name]["embedding_dim"] == 16
        assert "categorical" in specs[name]["tags"]
        for frame in frames:
            assert frame[name].between(0, specs[name]["cardinality"] - 1).all()
        # ids seen >= freq_threshold times in train get their own index after the buckets
        counts = train.groupby("user_id_raw").size() if name == "user_id" else None
        if counts is not None:
            assert specs[name]["cardinality"] == 1 + CONFIG.oov_buckets + int((counts >= 3).sum())
    for name in schema["continuous"]:
        assert specs[name]["dtype"] == "float32"
        for frame in frames:
            assert np.isfinite(frame[name]).all()
    assert specs["label"]["tags"] == ["target"]
    assert train["user_id_raw"].dtype == np.int64 and train["product_id_raw"].dtype == np.int64


def test_serving_transform_of_raw_rows_equals_the_etl_output(raw, etl):
    test_events = read_rees46(raw / "date=2026-04-04")
    first = test_events.drop_duplicates(["user_session", "product_id"])
    serving = first[["user_id", "product_id", "category_id", "brand", "price"]]
    encoded = Workflow.load(etl.workflow_dir).transform(serving)
    assert "label" not in encoded
    expected = _split(etl.test_dir).drop(columns=["label", "user_session_raw"])
    pd.testing.assert_frame_equal(_sorted(encoded[expected.columns]), _sorted(expected))


def test_unknown_users_and_products_at_serving_land_in_hashed_buckets(etl):
    workflow = Workflow.load(etl.workflow_dir)
    frame = pd.DataFrame({"user_id": [-5, -6], "product_id": [-1, -2], "category_id": [-3, None],
                          "brand": [None, "never-seen"], "price": [10.0, np.nan]})
    out = workflow.transform(frame)
    for col in ("user_id", "product_id"):
        assert out[col].between(1, CONFIG.oov_buckets).all()
    assert out["category_id"].tolist()[1] == 0 and 1 <= out["category_id"].tolist()[0] <= 4
    assert out["brand"].tolist()[0] == 0
    assert out["user_id_count"].nunique() == 1  # both unseen: same zero count after scaling
    assert np.isfinite(out.select_dtypes("float32")).all().all()


def test_training_target_encoding_is_out_of_fold_but_eval_splits_use_the_plain_mean(etl):
    train = _split(etl.train_dir)
    # One user, one set of fitted stats: train rows differ by fold, valid rows all agree.
    per_user_train = train.groupby("user_id_raw")["te_user_id_purchased"].nunique()
    assert (per_user_train > 1).any()
    valid = _split(etl.valid_dir)
    assert (valid.groupby("user_id_raw")["te_user_id_purchased"].nunique() == 1).all()


def test_distributed_local_cluster_gives_the_same_outputs_as_the_default_scheduler(raw, etl,
                                                                                  tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, distributed.Client(cluster):
        out = run_etl(raw, tmp_path / "dist", CONFIG)
    assert out.rows == etl.rows
    for split in ("train", "valid", "test"):
        pd.testing.assert_frame_equal(_sorted(_split(tmp_path / "dist" / split)),
                                      _sorted(_split(getattr(etl, f"{split}_dir"))))
    assert json.loads(out.schema_path.read_text())["columns"] == json.loads(
        etl.schema_path.read_text())["columns"]


def test_scheduler_address_in_the_config_runs_the_etl_on_that_cluster(raw, etl, tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        config = EtlConfig(freq_threshold=3, oov_buckets=4, scheduler=cluster.scheduler_address)
        out = run_etl(raw, tmp_path / "cluster", config)
        done = cluster.scheduler.transition_counter
    assert done > 0  # the cluster did the work, no Client was made by the caller
    assert out.rows == etl.rows
    pd.testing.assert_frame_equal(_sorted(_split(out.train_dir)), _sorted(_split(etl.train_dir)))


def test_too_few_days_for_the_time_split_fails_with_the_days_found(tmp_path):
    data = generate(SyntheticConfig(n_events=2_000, days=2, seed=1))
    write_events(data.events, tmp_path / "raw")
    with pytest.raises(SplitError, match="2 day"):
        run_etl(tmp_path / "raw", tmp_path / "out", EtlConfig())


def test_cli_run_writes_the_stage_outputs(raw, tmp_path, capsys):
    assert etl_cli(["run", "--events", str(raw), "--out", str(tmp_path / "out")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert Path(printed["schema_path"]).exists()
    assert (tmp_path / "out" / "workflow" / "workflow.json").exists()
    assert not (tmp_path / "out" / "_impressions").exists()
