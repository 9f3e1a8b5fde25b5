"""Synthetic events: determinism, layout, planted truth and its oracle AUC."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from etl.__main__ import main as etl_cli
from etl.errors import SyntheticDataError
from etl.synthetic import (EVENTS_SCHEMA, GroundTruth, SyntheticConfig, generate,
                           impressions_from_events, iter_event_days, oracle_auc, write_events)

SMALL = SyntheticConfig(n_events=30_000, days=3, seed=7, start_date="2026-03-01",
                        n_users=300, n_products=200)


@pytest.fixture(scope="module")
def small():
    return generate(SMALL)


def test_same_seed_gives_identical_events_and_other_seed_differs(small):
    again = generate(SMALL)
    pd.testing.assert_frame_equal(small.events, again.events)
    other = generate(dataclasses.replace(SMALL, seed=8))
    assert not small.events["user_session"].isin(other.events["user_session"]).any()


def test_event_count_is_exact_and_spread_over_the_requested_days(small):
    assert len(small.events) == SMALL.n_events
    per_day = small.events.groupby(small.events["event_time"].dt.strftime("%Y-%m-%d")).size()
    assert per_day.to_dict() == {"2026-03-01": 10_000, "2026-03-02": 10_000, "2026-03-03": 10_000}


def test_day_by_day_generation_equals_in_memory_generation(small):
    chunks = list(iter_event_days(SMALL))
    assert len(chunks) == SMALL.days
    pd.testing.assert_frame_equal(pd.concat(chunks, ignore_index=True), small.events)


def test_each_impression_has_one_view_and_purchases_follow_a_cart(small):
    ev = small.events
    kinds = ev.groupby(["user_session", "product_id"])["event_type"].value_counts().unstack(fill_value=0)
    assert (kinds["view"] == 1).all()
    assert (kinds["purchase"] <= 1).all()
    assert (kinds.loc[kinds["purchase"] == 1, "cart"] == 1).all()
    bought = ev[ev["event_type"] == "purchase"].set_index(["user_session", "product_id"])["event_time"]
    viewed = ev[ev["event_type"] == "view"].set_index(["user_session", "product_id"])["event_time"]
    assert (bought > viewed.reindex(bought.index)).all()


def test_purchase_rate_and_oracle_auc_are_informative_but_not_perfect(small):
    impressions = impressions_from_events(small.events)
    rate = impressions["label"].mean()
    assert 0.03 < rate < 0.25
    auc = oracle_auc(small.truth, impressions)
    assert 0.7 < auc < 0.95
    shuffled = impressions.assign(label=np.random.default_rng(0).permutation(impressions["label"]))
    assert abs(oracle_auc(small.truth, shuffled) - 0.5) < 0.05


def test_product_attributes_have_rare_nulls_and_valid_prices(small):
    ev = small.events
    assert 0 < ev["category_code"].isna().mean() < 0.2
    assert 0 < ev["brand"].isna().mean() < 0.2
    assert (ev["price"] > 0).all()
    per_product = ev.groupby("product_id")[["category_id", "price"]].nunique()
    assert (per_product == 1).all().all()


def test_written_partitions_follow_the_contract_and_manifest_rebuilds_the_truth(small, tmp_path):
    paths = write_events(small.events, tmp_path)
    assert [p.parent.name for p in paths] == ["date=2026-03-01", "date=2026-03-02", "date=2026-03-03"]
    assert pq.read_schema(paths[0]).remove_metadata() == EVENTS_SCHEMA
    assert sum(pq.ParquetFile(p).metadata.num_rows for p in paths) == SMALL.n_events
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["n_events"] == SMALL.n_events
    rebuilt = GroundTruth.from_manifest(tmp_path)
    sample = small.events.sample(500, random_state=0)
    np.testing.assert_array_equal(
        rebuilt.purchase_probability(sample["user_id"], sample["product_id"]),
        small.truth.purchase_probability(sample["user_id"], sample["product_id"]))


def test_probability_is_strictly_inside_zero_one_and_unknown_ids_are_rejected(small):
    p = small.truth.purchase_probability(small.truth.user_ids[:30], small.truth.product_ids[:30])
    assert p.dtype == np.float64 and ((p > 0) & (p < 1)).all()
    with pytest.raises(SyntheticDataError, match="user_id"):
        small.truth.purchase_probability(np.array([-1]), small.truth.product_ids[:1])
    with pytest.raises(SyntheticDataError, match="pair up"):
        small.truth.purchase_probability(small.truth.user_ids[:3], small.truth.product_ids[:2])


def test_entity_counts_scale_with_events_for_a_learnable_default():
    resolved = SyntheticConfig(n_events=1_000_000).resolved()
    assert 200 <= resolved.n_users <= 2_000
    assert 100 <= resolved.n_products <= 1_000


def test_invalid_config_is_refused_with_a_reason():
    with pytest.raises(SyntheticDataError, match="start_date"):
        SyntheticConfig(start_date="01/02/2026")
    with pytest.raises(SyntheticDataError, match="days"):
        SyntheticConfig(days=0)


def test_cli_generate_writes_partitions_and_manifest(tmp_path: Path, capsys):
    code = etl_cli(["generate", "--events", "2000", "--days", "2", "--start", "2026-05-01",
                    "--seed", "3", "--out", str(tmp_path / "raw")])
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == [
        "date=2026-05-01", "date=2026-05-02", "manifest.json"]
    assert json.loads(capsys.readouterr().out)["config"]["seed"] == 3


def test_start_date_may_be_given_as_a_date_and_is_stored_as_text():
    from datetime import date

    config = SyntheticConfig(start_date=date(2026, 2, 3), days=2)
    assert config.start_date == "2026-02-03"
    assert config.day(1) == date(2026, 2, 4)


def test_csv_output_reads_back_as_the_same_events_and_passes_validation(tmp_path):
    from datetime import datetime, timezone

    from etl.readers import read_rees46
    from etl.synthetic import SyntheticConfig, generate, write_events
    from validation import ValidationConfig, validate_events

    config = SyntheticConfig(n_events=2000, days=2, start_date="2026-05-01", seed=4)
    events = generate(config).events
    paths = write_events(events, tmp_path / "raw", config=config, fmt="csv")
    assert [p.name for p in paths] == ["events.csv", "events.csv"]
    back = read_rees46(paths)
    assert len(back) == len(events)
    assert back["price"].sum() == pytest.approx(events["price"].sum())
    report = validate_events(paths, tmp_path / "validated", ValidationConfig(
        window_start=datetime(2026, 5, 1, tzinfo=timezone.utc),
        window_end=datetime(2026, 5, 3, tzinfo=timezone.utc)))
    assert report.n_in == len(events) and report.n_quarantined == 0


def test_planted_model_overrides_are_typed_and_unknown_names_refused():
    assert SyntheticConfig.parse_override("product_bias_std=1.5") == ("product_bias_std", 1.5)
    assert SyntheticConfig.parse_override("latent_dim=4") == ("latent_dim", 4)
    for bad in ("n_events=5", "bogus=1", "latent_dim=x", "price_coef", "preference_mix="):
        with pytest.raises(SyntheticDataError):
            SyntheticConfig.parse_override(bad)


def _top_category_share(events: pd.DataFrame) -> float:
    """Mean share of a session's views in its most viewed category, over sessions of >= 4 views."""
    views = events[events["event_type"] == "view"]
    by_session = views.groupby("user_session")["category_id"]
    share = by_session.agg(lambda c: c.value_counts().iloc[0] / len(c))
    return float(share[by_session.size() >= 4].mean())


def _view_log_likelihood(events: pd.DataFrame, truth: GroundTruth) -> float:
    views = events[events["event_type"] == "view"]
    users = np.unique(views["user_id"].to_numpy())
    rows = np.searchsorted(users, views["user_id"].to_numpy())
    return float(np.log(truth.view_probability(users)[rows, truth.product_index(views["product_id"].to_numpy())]).mean())


def test_session_focus_keeps_a_session_in_one_category_and_its_oracle_knows_it():
    config = SyntheticConfig(n_events=60_000, n_users=200, n_products=300, days=7, seed=3)
    plain, focused = generate(config), generate(dataclasses.replace(config, session_focus=0.8))
    assert _top_category_share(focused.events) > _top_category_share(plain.events) + 0.3
    # each oracle explains its own shop's impressions better than the other one does
    plain_truth, focused_truth = plain.truth, focused.truth
    assert _view_log_likelihood(focused.events, focused_truth) > _view_log_likelihood(focused.events, plain_truth)
    assert _view_log_likelihood(plain.events, plain_truth) > _view_log_likelihood(plain.events, focused_truth)
    np.testing.assert_allclose(focused_truth.view_probability(focused_truth.user_ids[:5]).sum(axis=1), 1.0)
    with pytest.raises(SyntheticDataError, match="session_focus"):
        SyntheticConfig(session_focus=1.5)
