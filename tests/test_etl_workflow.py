"""Workflow and ops: encodings, hashing of rare/unknown values, leakage-free target encoding,
save/load round trip, Dask and pandas giving the same answer."""

from __future__ import annotations

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

from etl.errors import WorkflowError
from etl.ops import Categorify, Clip, FillMissing, HashBucket, LogOp, Normalize
from etl.ops_derived import JoinGroupby, LabelFromEventType, Rename, TargetEncoding, TimeFeatures
from etl.workflow import ColumnGroup, Workflow


def _frame(n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    brands = np.array(["acme", "zeta", "omni", "solo"], dtype=object)
    return pd.DataFrame({
        "user_id": rng.integers(0, 40, n).astype("int64"),
        "brand": brands[rng.choice(4, n, p=[0.6, 0.3, 0.099, 0.001])],
        "price": np.where(rng.random(n) < 0.1, np.nan, rng.lognormal(3, 1, n)),
        "event_type": rng.choice(["view", "cart", "purchase"], n),
        "label": rng.integers(0, 2, n),
        "event_time": pd.Timestamp("2026-01-05", tz="UTC") + pd.to_timedelta(
            rng.integers(0, 7 * 86_400, n), unit="s"),
    })


def test_categorify_orders_by_frequency_and_reserves_zero_for_null():
    train = pd.DataFrame({"brand": ["b", "a", "a", "c", "a", "b", None]})
    wf = Workflow([ColumnGroup(["brand"]) >> Categorify(freq_threshold=1, num_buckets=2)]).fit(train)
    out = wf.transform(train)["brand"].tolist()
    # 0 null, 1-2 hash buckets, then a (3 rows), b (2), c (1)
    assert out == [4, 3, 3, 5, 3, 4, 0]
    assert wf.groups[0].ops[-1].cardinality("brand") == 6


def test_rare_and_unseen_values_share_hashed_buckets_deterministically():
    train = pd.DataFrame({"user_id": [1, 1, 1, 2, 2, 3, 4, 5]})
    wf = Workflow([ColumnGroup(["user_id"]) >> Categorify(freq_threshold=2, num_buckets=3)]).fit(train)
    serving = pd.DataFrame({"user_id": [1, 2, 3, 99, 12345, 99]})
    codes = wf.transform(serving)["user_id"].to_numpy()
    assert codes[0] == 4 and codes[1] == 5  # kept, by frequency after 0 and buckets 1..3
    assert all(1 <= c <= 3 for c in codes[2:])  # rare 3 and unseen 99, 12345 are hashed
    assert codes[3] == codes[5]
    assert (wf.transform(serving)["user_id"].to_numpy() == codes).all()


def test_categorify_without_buckets_maps_unknown_values_to_zero():
    wf = Workflow([ColumnGroup(["x"]) >> Categorify(num_buckets=0)]).fit(pd.DataFrame({"x": [5, 6]}))
    assert wf.transform(pd.DataFrame({"x": [6, 7]}))["x"].tolist() == [2, 0]


def test_hash_bucket_keeps_indices_in_range_and_null_at_zero():
    df = pd.DataFrame({"c": ["a", "b", None, "zz", "a"]})
    wf = Workflow([ColumnGroup(["c"]) >> HashBucket(7)]).fit(df)
    out = wf.transform(df)["c"].to_numpy()
    assert out[2] == 0 and out[0] == out[4]
    assert ((out[[0, 1, 3]] >= 1) & (out[[0, 1, 3]] <= 7)).all()


def test_continuous_chain_fills_logs_and_standardises():
    df = pd.DataFrame({"price": [0.0, np.nan, np.e - 1, np.e**2 - 1]})
    wf = Workflow([ColumnGroup(["price"]) >> FillMissing(0.0) >> LogOp() >> Normalize()]).fit(df)
    out = wf.transform(df)["price"].to_numpy()
    logged = np.array([0.0, 0.0, 1.0, 2.0])
    np.testing.assert_allclose(out, (logged - logged.mean()) / logged.std(ddof=1), rtol=1e-6)
    assert out.dtype == np.float32


def test_fill_missing_with_fitted_mean_and_clip():
    df = pd.DataFrame({"x": [1.0, 3.0, np.nan, 10.0]})
    wf = Workflow([ColumnGroup(["x"]) >> FillMissing(None) >> Clip(0.0, 5.0)]).fit(df)
    assert wf.transform(df)["x"].tolist() == [1.0, 3.0, 14 / 3, 5.0]


def test_target_encoding_never_uses_a_rows_own_label_on_the_fit_data():
    # Every value appears once: out of fold, nothing but the prior is known about it.
    df = pd.DataFrame({"item": np.arange(200), "label": np.tile([0, 1, 1, 1], 50)})
    te = TargetEncoding("label", kfold=5, p_smooth=10.0)
    wf = Workflow([ColumnGroup(["item"]) >> te])
    fitted = wf.fit_transform(dd.from_pandas(df, npartitions=3)).compute()["te_item_label"]
    np.testing.assert_allclose(fitted.to_numpy(), 0.75, rtol=1e-6)
    plain = wf.transform(df)["te_item_label"].to_numpy()
    np.testing.assert_allclose(plain, (df["label"] + 10 * 0.75) / 11, rtol=1e-6)


def test_target_encoding_out_of_fold_equals_a_hand_computed_fold_mean():
    df = pd.DataFrame({"item": np.repeat([1, 2], 50), "label": np.r_[np.ones(30), np.zeros(70)],
                       "key": np.arange(100)})
    wf = Workflow([ColumnGroup(["item"]) >> TargetEncoding("label", kfold=4, p_smooth=0.0)],
                  row_key=["key"])
    wf.fit(df)
    enc = wf.transform(df, fit_mode=True)["te_item_label"].to_numpy()
    from etl.ops_derived import assign_folds
    folds = assign_folds(pd.util.hash_pandas_object(df[["key"]], index=False).to_numpy(), 4)
    for row in (0, 10, 60, 99):
        others = df[(df["item"] == df["item"][row]) & (folds != folds[row])]
        assert enc[row] == pytest.approx(others["label"].mean(), rel=1e-6)


def test_join_groupby_counts_fit_rows_and_gives_zero_to_unseen():
    train = pd.DataFrame({"user_id": [1, 1, 2, 3, 3, 3]})
    wf = Workflow([ColumnGroup(["user_id"]) >> JoinGroupby()]).fit(train)
    out = wf.transform(pd.DataFrame({"user_id": [3, 1, 2, 42]}))
    assert out["user_id_count"].tolist() == [3.0, 2.0, 1.0, 0.0]


def test_time_features_and_label_from_event_type():
    df = pd.DataFrame({"event_time": pd.to_datetime(["2026-01-05 06:00", "2026-01-11 18:00"], utc=True),
                       "event_type": ["purchase", "cart"]})
    wf = Workflow([ColumnGroup(["event_time"]) >> TimeFeatures(),
                   ColumnGroup(["event_type"], optional=True) >> LabelFromEventType()]).fit(df)
    out = wf.transform(df)
    np.testing.assert_allclose(out["event_time_hour_sin"], [1.0, -1.0], atol=1e-6)  # 6h, 18h
    np.testing.assert_allclose(out["event_time_weekday_sin"], [0.0, np.sin(2 * np.pi * 6 / 7)],
                               atol=1e-6)  # Monday, Sunday
    assert out["label"].tolist() == [1.0, 0.0]
    assert "label" not in wf.transform(df.drop(columns="event_type"))


def _full_workflow() -> Workflow:
    return Workflow([
        ColumnGroup(["user_id", "brand"], tags=["user"]) >> Categorify(2, 3),
        ColumnGroup(["price"]) >> FillMissing() >> LogOp() >> Normalize(),
        ColumnGroup(["user_id"]) >> JoinGroupby() >> LogOp() >> Normalize(),
        ColumnGroup(["user_id", "brand"]) >> TargetEncoding("label", kfold=3) >> Normalize(),
        ColumnGroup(["user_id"]) >> Rename("_raw"),
        ColumnGroup(["event_type"], optional=True) >> LabelFromEventType(),
    ])


def test_save_and_load_round_trip_gives_identical_transforms(tmp_path):
    train, other = _frame(seed=1), _frame(seed=2)
    wf = _full_workflow().fit(dd.from_pandas(train, npartitions=4))
    wf.save(tmp_path / "wf")
    loaded = Workflow.load(tmp_path / "wf")
    pd.testing.assert_frame_equal(loaded.transform(other), wf.transform(other))
    assert not any(p.suffix == ".pkl" for p in (tmp_path / "wf").rglob("*"))
    serving = other.drop(columns=["label", "event_type"]).head(5)
    assert "label" not in loaded.transform(serving)


def test_dask_and_pandas_transforms_agree():
    train = _frame(seed=3)
    wf = _full_workflow().fit(dd.from_pandas(train, npartitions=3))
    by_dask = wf.transform(dd.from_pandas(train, npartitions=5)).compute()
    pd.testing.assert_frame_equal(by_dask, wf.transform(train))


def test_misuse_is_reported_with_an_actionable_message(tmp_path):
    with pytest.raises(WorkflowError, match="not fitted"):
        _full_workflow().transform(_frame())
    with pytest.raises(WorkflowError, match="lacks columns"):
        _full_workflow().fit(_frame()).transform(pd.DataFrame({"user_id": [1]}))
    with pytest.raises(WorkflowError, match="produced by groups"):
        Workflow([ColumnGroup(["a"]) >> LogOp(), ColumnGroup(["a"]) >> Clip(0, 1)])
    with pytest.raises(WorkflowError, match="no workflow.json"):
        Workflow.load(tmp_path)


def test_arrow_fast_path_encodes_like_the_workflow(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench.arrow_engine import fit_transform_parquet

    frame = _frame(n=3_000, seed=4)[["brand", "price"]].assign(
        user=lambda d: d["brand"].where(np.arange(len(d)) % 7 != 0, None).astype(object))
    # Two row groups give two dictionaries that the fast path has to reconcile.
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "in.parquet",
                   row_group_size=1_000)
    stats = fit_transform_parquet(tmp_path / "in.parquet", tmp_path / "out", ["brand", "user"],
                                  ["price"], freq_threshold=10, num_buckets=3)
    fast = pd.read_parquet(tmp_path / "out")
    wf = Workflow([ColumnGroup(["brand", "user"]) >> Categorify(10, 3),
                   ColumnGroup(["price"]) >> FillMissing(0.0) >> LogOp() >> Normalize()]).fit(frame)
    slow = wf.transform(frame)
    assert fast["brand"].tolist() == slow["brand"].tolist()
    assert fast["user"].tolist() == slow["user"].tolist()
    np.testing.assert_allclose(fast["price"], slow["price"], rtol=1e-5, atol=1e-6)
    assert stats.cardinality["brand"] == wf.groups[0].ops[0].cardinality("brand")
