"""The nightly stage functions outside Airflow: the window, fail-closed validation seen in MLflow,
drift measured against the previous run's profile."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest

import cli
from stages import nightly
from settings import Settings

RUN_DATE = "2026-03-10"


@pytest.fixture
def settings(recsys_home: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("RECSYS_WINDOW_DAYS", "4")
    settings = Settings.from_env()
    cli.generate(settings, 6000, date.fromisoformat(RUN_DATE), days=4, seed=3, corrupt=0)
    return settings


def test_ingest_takes_the_days_before_the_logical_date(settings: Settings) -> None:
    ingested = nightly.ingest(RUN_DATE, settings)
    days = sorted({Path(f).parent.name for f in ingested["files"]})
    assert days == ["date=2026-03-06", "date=2026-03-07", "date=2026-03-08", "date=2026-03-09"]
    assert ingested["window_end"].startswith(RUN_DATE)


def test_no_partitions_in_the_window_is_a_clear_error(settings: Settings) -> None:
    with pytest.raises(nightly.NoInputData, match="no raw events"):
        nightly.ingest("2025-01-01", settings)


def test_failed_validation_is_recorded_in_mlflow_with_its_reason(settings: Settings) -> None:
    from mlflow import MlflowClient

    from validation import ValidationFailed

    ingested = nightly.ingest(RUN_DATE, settings)
    spoiled = cli.corrupt_rows(Path(ingested["files"][-1]), 400, seed=1)  # far above 5 %
    with pytest.raises(ValidationFailed):
        nightly.validate(RUN_DATE, ingested, settings)
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(settings.model_name)
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FAILED"
    assert "bad" in run.data.tags["validation.reason"].lower() or "threshold" in run.data.tags["validation.reason"]
    assert run.data.metrics["n_quarantined"] == spoiled
    assert run.data.metrics["n_in"] == run.data.metrics["n_passed"] + spoiled


def test_drift_is_measured_against_the_latest_passing_run(settings: Settings) -> None:
    assert nightly.previous_profile(RUN_DATE, settings) is None
    first = nightly.validate(RUN_DATE, nightly.ingest(RUN_DATE, settings), settings)
    later = "2026-03-11"
    assert nightly.previous_profile(later, settings) == Path(first["report"]).parent / "profile.json"
    report = json.loads(Path(nightly.validate(later, nightly.ingest(later, settings), settings)["report"]).read_text())
    assert report["drift"]  # compared with the first run's profile


def _stage_outputs(tmp: Path) -> tuple[dict, dict, dict, dict]:
    """The smallest `validate`/`fit_workflow`/`train`/`evaluate` results `register` accepts."""
    from models.dlrm import DLRM, DLRMConfig, save_model

    events = tmp / "validation" / "valid" / "events.parquet"
    events.parent.mkdir(parents=True)
    events.write_bytes(b"validated events")
    report = tmp / "validation" / "report.json"
    report.write_text(json.dumps({"success": True, "unreadable_files": []}))
    (tmp / "validation" / "data_docs").mkdir()
    schema = tmp / "features" / "schema.json"
    (tmp / "features" / "workflow").mkdir(parents=True)
    (tmp / "features" / "test").mkdir()
    (tmp / "features" / "test" / "part-0.parquet").write_bytes(b"test split")
    (tmp / "features" / "workflow" / "workflow.json").write_text('{"ops": []}')
    schema.write_text(json.dumps({"categorical": ["user_id", "product_id"], "continuous": ["a"]}))
    model = save_model(DLRM(DLRMConfig(1, [5, 7], embedding_dim=4, bottom_mlp=[8], top_mlp=[8])),
                       tmp / "model" / "ranker.pt")
    (tmp / "eval").mkdir()
    (tmp / "eval" / "comparison.json").write_text("{}")
    validated = {"events": str(events), "report": str(report), "data_docs": str(report.parent / "data_docs"),
                 "n_in": 10, "n_passed": 10, "n_quarantined": 0}
    features = {"schema": str(schema), "workflow": str(tmp / "features" / "workflow"),
                "train": str(tmp / "features" / "test"), "valid": str(tmp / "features" / "test"),
                "test": str(tmp / "features" / "test")}
    trained = {"model_path": str(model), "model_dir": str(model.parent), "schema": str(schema), "mode": "ranker",
               "history": [{"epoch": 1, "loss": 0.5}], "config": {"lr": 0.1}}
    evaluated = {"metrics": {"ndcg_at_10": 0.2, "baseline_ndcg_at_10": 0.1}, "best_baseline": "ease",
                 "dir": str(tmp / "eval")}
    return validated, features, trained, evaluated


def test_registered_run_names_its_input_paths_whole(recsys_home: Path, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    settings = Settings.from_env()
    validated, features, trained, evaluated = _stage_outputs(tmp_path / "stages")

    registered = nightly.register(RUN_DATE, validated, features, trained, evaluated, None, settings)

    run = MlflowClient(tracking_uri=settings.mlflow_tracking_uri).get_run(registered["run_id"])
    assert run.data.tags["lineage.input_paths"] == validated["events"]


def test_a_retried_register_finds_the_first_registration(recsys_home: Path, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    settings = Settings.from_env()
    outputs = _stage_outputs(tmp_path / "stages")
    first = nightly.register(RUN_DATE, *outputs, None, settings)
    again = nightly.register(RUN_DATE, *outputs, None, settings)
    assert again == first
    versions = MlflowClient(tracking_uri=settings.mlflow_tracking_uri).search_model_versions(
        f"name = '{settings.model_name}'")
    assert [str(v.version) for v in versions] == [first["version"]]


def test_cli_nightly_reports_a_closed_validation_as_one_error_line(settings: Settings) -> None:
    import subprocess
    import sys

    ingested = nightly.ingest(RUN_DATE, settings)
    cli.corrupt_rows(Path(ingested["files"][-1]), 400, seed=1)

    done = subprocess.run([sys.executable, "-m", "cli", "nightly", "--date", RUN_DATE],
                          cwd=cli.REPO, capture_output=True, text=True, timeout=300)

    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "validation failed closed" in errors[0]
    assert done.stdout == ""


def _with_noise_file(ingested: dict, tmp_path: Path) -> tuple[dict, Path]:
    noise = tmp_path / "noise.parquet"
    noise.write_bytes(bytes(range(256)) * 4)  # no Parquet footer: counted from its size
    return ingested | {"files": ingested["files"] + [str(noise)]}, noise


def test_unreadable_inputs_are_named_in_the_failed_mlflow_run(settings: Settings, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from validation import ValidationFailed

    ingested, noise = _with_noise_file(nightly.ingest(RUN_DATE, settings), tmp_path)
    cli.corrupt_rows(Path(ingested["files"][0]), 400, seed=1)
    with pytest.raises(ValidationFailed):
        nightly.validate(RUN_DATE, ingested, settings)

    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name(settings.model_name).experiment_id])
    (listed,) = json.loads(run.data.tags["validation.unreadable_files"])
    assert listed["path"] == str(noise) and listed["rows"] >= 1 and listed["counted_by"] == "size_estimate"
    assert run.data.tags["validation.n_unreadable_files"] == "1"


def test_unreadable_inputs_are_named_in_the_registered_run(settings: Settings, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    ingested, noise = _with_noise_file(nightly.ingest(RUN_DATE, settings), tmp_path)
    validated = nightly.validate(RUN_DATE, ingested, settings)  # a few counted rows stay under 5 %
    _, features, trained, evaluated = _stage_outputs(tmp_path / "stages")

    registered = nightly.register(RUN_DATE, validated, features, trained, evaluated, None, settings)

    tags = MlflowClient(tracking_uri=settings.mlflow_tracking_uri).get_run(registered["run_id"]).data.tags
    (listed,) = json.loads(tags["validation.unreadable_files"])
    assert listed["path"] == str(noise)
    assert tags["validation.n_unreadable_rows"] == str(listed["rows"]) == str(validated["unreadable_files"][0]["rows"])


def test_evaluate_scores_the_champion_and_the_gate_decides_on_those_numbers(recsys_home: Path,
                                                                            tmp_path: Path) -> None:
    """The champion's served path, downloaded from the registry, is scored on tonight's users beside the
    challenger (paired per user); the gate then decides on those numbers alone."""
    import numpy as np

    from etl import SyntheticConfig, generate
    from training.compare import served_lists
    from training.quality import build_task, last_days_split, list_metrics
    from training.ranker import MODEL_FILE, RankerConfig, fit_recommender

    settings = Settings.from_env()
    split = last_days_split(generate(SyntheticConfig(n_events=3000, n_users=60, n_products=100, days=4,
                                                     seed=3)).events, 1)
    task = build_task(split)
    assert nightly._versus_champion(task, np.zeros(len(task.users)), settings, 10) == (None, None)  # no champion

    fitted = fit_recommender(split.train, split.items, RankerConfig(sources=("item_knn", "popularity"), epochs=1, pool_size=30, cuts=1))
    model_dir = fitted.save(tmp_path / "recommender")
    validated, features, trained, evaluated = _stage_outputs(tmp_path / "stages")
    trained |= {"model_dir": str(model_dir), "model_path": str(model_dir / MODEL_FILE)}
    evaluated["metrics"] |= {"eval_users": 500.0, "vs_baseline_ndcg_at_10_ci_low": 0.05,
                             "vs_baseline_ndcg_at_10_ci_high": 0.15}
    first = nightly.register(RUN_DATE, validated, features, trained, evaluated, None, settings)
    assert nightly.promote(RUN_DATE, evaluated, first, settings)["promoted"]  # no champion yet

    own = list_metrics(task, served_lists(fitted.recommender, fitted.scorer(), task, 10), 10).ndcg
    tie, per_user = nightly._versus_champion(task, own, settings, 10)
    assert tie is not None and tie["version"] == first["version"] and tie["users"] == len(task.users)
    np.testing.assert_allclose(per_user, own)  # the registered champion serves exactly what was fitted
    assert tie["diff"] == tie["diff_ci_low"] == tie["diff_ci_high"] == 0.0
    better, _ = nightly._versus_champion(task, own + 0.1, settings, 10)
    assert better is not None and better["diff_ci_low"] == pytest.approx(0.1)

    later = "2026-03-11"
    second = nightly.register(later, validated, features, trained, evaluated, None, settings)
    kept = nightly.promote(later, evaluated | {"champion": tie}, second, settings)
    assert not kept["promoted"] and f"champion v{first['version']}" in kept["reason"]
    moved = nightly.promote(later, evaluated | {"champion": better}, second, settings)
    assert moved["promoted"] and moved["evidence"]["vs_champion_ci_low"] == pytest.approx(0.1)


def test_the_session_split_setting_trains_evaluates_and_records_the_nights_question(recsys_home: Path,
                                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                                    tmp_path: Path) -> None:
    """RECSYS_EVAL_SPLIT=session_rest: the ranker's cuts use the session split, the evaluation's targets are the
    rest of each user's last session in the held-out day, and the split is in the run's params, tags and the
    gate's decision."""
    import pandas as pd
    from mlflow import MlflowClient

    from training.quality import build_task, last_days_split

    monkeypatch.setenv("RECSYS_WINDOW_DAYS", "4")
    monkeypatch.setenv("RECSYS_TRAIN_EPOCHS", "1")
    monkeypatch.setenv("RECSYS_EVAL_SPLIT", "session_rest")
    settings = Settings.from_env()
    assert settings.eval_split == "session_rest"
    cli.generate(settings, 12000, date.fromisoformat(RUN_DATE), days=4, seed=3, corrupt=0, users=120, products=200)
    validated = nightly.validate(RUN_DATE, nightly.ingest(RUN_DATE, settings), settings)
    trained = nightly.train(RUN_DATE, validated, settings)
    assert trained["config"]["split"] == "session_rest" and trained["config"]["eval_split"] == "session_rest"
    evaluated = nightly.evaluate(RUN_DATE, validated, trained, settings)

    events = pd.read_parquet(validated["events"])
    session, window = (build_task(last_days_split(events, 1, by=by)) for by in ("session_rest", "window"))
    assert evaluated["metrics"]["eval_users"] == len(session.users) != len(window.users)
    assert session.relevant.sum() < window.relevant.sum()  # only the rest of one session per user is asked

    _, features, _, _ = _stage_outputs(tmp_path / "stages")
    registered = nightly.register(RUN_DATE, validated, features, trained, evaluated, None, settings)
    decision = nightly.promote(RUN_DATE, evaluated, registered, settings)
    assert decision["eval_split"] == "session_rest"
    run = MlflowClient(settings.mlflow_tracking_uri).get_run(registered["run_id"])
    assert run.data.params["eval_split"] == "session_rest" and run.data.tags["eval.split"] == "session_rest"
    assert run.data.tags["promotion.eval_split"] == "session_rest"
