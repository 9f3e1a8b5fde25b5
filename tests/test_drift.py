"""Drift between nights: PSI arithmetic, levels, and nights of the synthetic shop with and without a shift."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from etl import SyntheticConfig, generate
from registry.drift import (DriftReport, bin_edges, compare_profiles, dlrm_item_embeddings, load_profile, profile,
                            psi, psi_of_shares, shares)
from training.quality import build_task, last_days_split
from training.ranker import FittedRecommender, RankerConfig, fit_recommender

SHOP = dict(n_events=24_000, n_users=1000, n_products=300, days=7, seed=3)


def test_psi_matches_hand_computed_values() -> None:
    # two bins cut halfway between 4 and 5 (the median of 0..9): reference 50/50, tonight 80/20
    reference = np.arange(10.0)
    assert bin_edges(reference, bins=2).tolist() == [4.5]
    tonight = np.array([0, 1, 2, 3, 4, 4, 4, 4, 8, 9], dtype=float)
    want = (0.8 - 0.5) * math.log(0.8 / 0.5) + (0.2 - 0.5) * math.log(0.2 / 0.5)  # 0.415888
    assert psi(reference, tonight, bins=2) == pytest.approx(want, abs=1e-9)
    assert psi(reference, reference, bins=2) == 0.0
    # three bins by hand: e = (0.2, 0.3, 0.5), a = (0.25, 0.25, 0.5): 0.05 ln 1.25 - 0.05 ln (0.25/0.3)
    assert psi_of_shares([0.2, 0.3, 0.5], [0.25, 0.25, 0.5]) == pytest.approx(
        0.05 * math.log(1.25) - 0.05 * math.log(0.25 / 0.3), abs=1e-12)
    # an empty bin costs a finite amount: its share is floored at 1e-4 and the shares renormalised
    a = np.array([1.0, 1e-4]) / 1.0001
    assert psi(reference, np.zeros(5), bins=2) == pytest.approx(
        (a[0] - 0.5) * math.log(a[0] / 0.5) + (a[1] - 0.5) * math.log(a[1] / 0.5), rel=1e-9)


def test_edges_fall_between_values_so_a_clump_does_not_flip_bins() -> None:
    clumpy = np.repeat([1.0, 2.0, 3.0, 4.0], [40, 30, 20, 10])
    edges = bin_edges(clumpy, bins=10)
    assert set(edges.tolist()) <= {1.5, 2.5, 3.5} and not np.isin(edges, clumpy).any()
    nudged = clumpy + 0.01  # every value moves a little: no bin changes, PSI 0
    assert psi(clumpy, nudged) == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(shares(clumpy, edges).sum(), 1.0)


def test_levels_follow_the_thresholds_and_reported_only_figures_do_not_gate() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=20_000)
    ref = {"feature.a": base, "score": base}
    same = compare_profiles(ref, {"feature.a": rng.normal(size=20_000), "score": rng.normal(size=20_000) + 5})
    assert same.level == "ok" and same.psi["score"] > 1 and "drift_psi_max" in same.metrics()
    assert same.metrics()["drift_psi_max"] == pytest.approx(same.psi["feature.a"])  # the gated maximum only
    warn = compare_profiles(ref, {"feature.a": rng.normal(size=20_000) + 0.4})
    block = compare_profiles(ref, {"feature.a": rng.normal(size=20_000) + 1.0})
    assert warn.level == "warn" and 0.1 <= warn.psi["feature.a"] < 0.25
    assert block.level == "block" and "feature.a" in block.reason and block.tags()["drift"] == "block"
    assert DriftReport.from_json(block.to_json()) == block
    assert compare_profiles(ref, {"other": base}).level == "none"


def _night(events: pd.DataFrame, first_day: int) -> tuple[FittedRecommender, object]:
    """The nightly window of six days starting `first_day` days into `events`: fit, then its eval task."""
    when = pd.to_datetime(events["event_time"])
    start = when.min().normalize() + pd.Timedelta(days=first_day)
    split = last_days_split(events[(when >= start) & (when < start + pd.Timedelta(days=6))], 1)
    return fit_recommender(split.train, split.items, RankerConfig(epochs=1, cuts=1, pool_size=30)), build_task(split)


def _profile(night: tuple[FittedRecommender, object]) -> dict[str, np.ndarray]:
    fitted, task = night
    return profile(fitted.recommender, fitted.scorer(), task.history, task.excluded,  # type: ignore[attr-defined]
                   dlrm_item_embeddings(fitted.ranker))


@pytest.fixture(scope="module")
def nights() -> dict[str, tuple[FittedRecommender, object]]:
    """Last night, tonight on the same shop one day later, and tonight on a shop whose customers buy
    far more per impression (the generator's base purchase logit raised from -2 to -0.5)."""
    shop = generate(SyntheticConfig(**SHOP)).events
    shifted = generate(SyntheticConfig(**SHOP | {"base_logit": -0.5})).events
    return {"last": _night(shop, 0), "same": _night(shop, 1), "shifted": _night(shifted, 1)}


def test_a_shifted_night_is_blocked_and_an_unshifted_one_is_not(nights) -> None:  # type: ignore[no-untyped-def]
    last = _profile(nights["last"])
    assert {"score", "score_z", "norm.dlrm_item_embedding", "norm.als_item_factors",
            "feature.conversion"} <= set(last)
    same = compare_profiles(last, _profile(nights["same"]), warn=0.1, block=0.25)
    shifted = compare_profiles(last, _profile(nights["shifted"]), warn=0.1, block=0.25)
    # Customers converting more: the catalogue's conversion statistics move past the block line.
    assert shifted.level == "block" and shifted.gated["item.conversion"] >= 0.25
    assert shifted.worst[0].startswith("item.")  # type: ignore[index]
    assert same.level == "ok" and same.metrics()["drift_psi_max"] < 0.1
    assert {"feature.conversion", "score"} <= set(same.psi) and not set(same.gated) & {"feature.conversion", "score"}

def test_the_nightly_stage_compares_with_the_previous_night_then_the_champions_logged_profile(  # type: ignore[no-untyped-def]
        nights, recsys_home: Path, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from stages import nightly
    from settings import Settings

    settings = Settings.from_env()
    fitted, task = nights["last"]
    shifted, shifted_task = nights["shifted"]
    eval_dir = settings.run_dir("2026-01-06") / "eval"
    assert nightly.drift(fitted, task, eval_dir, settings, "2026-01-06").level == "none"  # the first night
    assert json.loads((eval_dir / "drift.json").read_text())["level"] == "none"
    # No champion yet: tonight is compared with the latest earlier night on disk.
    report = nightly.drift(shifted, shifted_task, settings.run_dir("2026-01-07") / "eval", settings, "2026-01-07")
    assert report.level == "block" and "night 2026-01-06 (no champion yet)" in report.reason

    # The champion: a registered version whose run logged the first night's eval/ (as `register` does).
    client = MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)
    experiment = client.create_experiment(settings.model_name, artifact_location=settings.mlflow_artifact_root)
    run = client.create_run(experiment)
    client.log_param(run.info.run_id, "run_date", "2026-01-06")
    client.log_artifacts(run.info.run_id, str(eval_dir), "eval")
    client.create_registered_model(settings.model_name)
    version = client.create_model_version(settings.model_name, f"runs:/{run.info.run_id}/eval", run.info.run_id).version
    client.set_registered_model_alias(settings.model_name, "champion", version)

    out = tmp_path / "tonight" / "eval"
    report = nightly.drift(shifted, shifted_task, out, settings, "2026-01-08")
    assert report.level == "block" and f"champion v{version} (night 2026-01-06" in report.reason
    assert report.tags()["drift"] == "block" and report.metrics()["drift_psi_max"] >= settings.drift_block
    assert set(load_profile(out / "drift_profile.npz")) >= {"score", "feature.conversion", "item.conversion"}
    assert (out / "plots" / "drift_psi.png").stat().st_size > 0 and (out / "plots" / "drift_histograms.png").is_file()
