"""The nightly training run's stages, as plain functions over paths: the DAG, the CLI and tests call these.

Each function takes the run date (the DAG's logical date, `YYYY-MM-DD`), `Settings`, and the
small JSON dicts the previous stages returned (they travel as XComs), and returns such a dict.
Outputs go under `settings.run_dir(run_date)`, so re-running a date overwrites only its own run.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from settings import Settings

log = logging.getLogger(__name__)

Stage = dict[str, Any]


class NoInputData(RuntimeError):
    """The run window holds no raw event partitions."""


def run_window(run_date: str, settings: Settings) -> tuple[datetime, datetime]:
    """[start, end) of the events a run trains on: the `window_days` days before the logical date."""
    end = datetime.combine(date.fromisoformat(run_date), datetime.min.time(), tzinfo=timezone.utc)
    return end - timedelta(days=settings.window_days), end


def ingest(run_date: str, settings: Settings) -> Stage:
    """Pick the raw day partitions (`date=YYYY-MM-DD/`) inside the run window."""
    from etl.readers import select_partitions

    start, end = run_window(run_date, settings)
    files = [str(f) for f in select_partitions(settings.raw_dir, start, end)] if settings.raw_dir.is_dir() else []
    if not files:
        raise NoInputData(
            f"no raw events under {settings.raw_dir} for {start.date()}..{end.date()} "
            "(expected date=YYYY-MM-DD/ partitions); generate some with `python -m cli generate`"
        )
    log.info("ingest: %d files in window %s..%s", len(files), start.date(), end.date())
    return {"files": files, "window_start": start.isoformat(), "window_end": end.isoformat()}


def validate(run_date: str, ingested: Stage, settings: Settings) -> Stage:
    """Great Expectations on the raw events; bad rows quarantined; raises ValidationFailed (fail closed).

    Drift is measured against the profile of the latest earlier run. A failure is also logged to
    MLflow as a FAILED run carrying the reason, the report and the Data Docs.
    """
    from validation import ValidationConfig, ValidationFailed, validate_events

    config = ValidationConfig(
        window_start=datetime.fromisoformat(ingested["window_start"]),
        window_end=datetime.fromisoformat(ingested["window_end"]),
        bad_row_threshold=settings.bad_row_threshold,
        previous_profile=previous_profile(run_date, settings),
    )
    out_dir = settings.run_dir(run_date) / "validation"
    try:
        report = validate_events([Path(f) for f in ingested["files"]], out_dir, config)
    except ValidationFailed as exc:
        from registry import log_rejected_data

        log_rejected_data(
            settings.mlflow_tracking_uri, settings.model_name, str(exc), out_dir / "report.json",
            out_dir / "data_docs", artifact_root=settings.mlflow_artifact_root,
            tags={"run_date": run_date, **unreadable_tags(exc.report.unreadable_files)},
        )
        raise
    log.info(
        "validate: in=%d passed=%d quarantined=%d", report.n_in, report.n_passed, report.n_quarantined
    )
    return {
        "events": str(out_dir / "valid" / "events.parquet"),
        "report": str(out_dir / "report.json"),
        "data_docs": str(out_dir / "data_docs"),
        "n_in": report.n_in,
        "n_passed": report.n_passed,
        "n_quarantined": report.n_quarantined,
        "unreadable_files": report.unreadable_files,
    }


_MAX_TAG_CHARS = 5000  # MLflow's tag value limit


def unreadable_tags(unreadable_files: list[dict]) -> dict[str, str]:
    """MLflow tags naming the files validation could not read and the records counted for each
    (the full list is in the logged report.json, `unreadable_files`)."""
    listed = json.dumps([{k: u[k] for k in ("path", "rows", "counted_by")} for u in unreadable_files])
    if len(listed) > _MAX_TAG_CHARS:
        listed = listed[: _MAX_TAG_CHARS - 3] + "..."
    return {"validation.n_unreadable_files": str(len(unreadable_files)),
            "validation.n_unreadable_rows": str(sum(u["rows"] for u in unreadable_files)),
            "validation.unreadable_files": listed}


def previous_profile(run_date: str, settings: Settings) -> Path | None:
    """The data profile of the latest run before `run_date` that passed validation, if any."""
    runs = settings.home / "runs"
    earlier = sorted(p for p in runs.glob("*/validation/profile.json") if p.parts[-3] < run_date) if runs.is_dir() else []
    passed = [p for p in earlier if json.loads((p.parent / "report.json").read_text()).get("success")]
    return passed[-1] if passed else None


def fit_workflow(run_date: str, validated: Stage, settings: Settings) -> Stage:
    """Fit the ETL workflow on the training window and transform train/valid/test to Parquet."""
    from etl import EtlConfig, run_etl

    out_dir = settings.run_dir(run_date) / "features"
    outputs = run_etl(Path(validated["events"]), out_dir, EtlConfig())
    return {
        "dir": str(out_dir),
        "train": str(outputs.train_dir),
        "valid": str(outputs.valid_dir),
        "test": str(outputs.test_dir),
        "schema": str(outputs.schema_path),
        "workflow": str(outputs.workflow_dir),
        "rows": _jsonable(outputs.rows),
    }


def train(run_date: str, features: Stage, settings: Settings) -> Stage:
    """Train the DLRM on the ETL output (GPU when present, CPU otherwise)."""
    from training import TrainConfig, TrainInputs
    from training import train as train_model

    config = TrainConfig(
        epochs=settings.train_epochs,
        batch_size=settings.train_batch_size,
        device=settings.train_device,
    )
    data = _train_inputs(features)
    result = train_model(TrainInputs(**data), config, settings.run_dir(run_date) / "model")
    return {
        "model_path": str(result.model_path),
        "history": result.history,
        "best_valid_auc": result.best_valid_auc,
        "config": _jsonable(asdict(config)),
    }


def train_retrieval(run_date: str, features: Stage, settings: Settings) -> Stage:
    """Train the two-tower candidate model and score it on the full catalogue against popularity."""
    from training.retrieval import RetrievalConfig, evaluate_retrieval
    from training.retrieval import train_retrieval as train_two_tower

    etl_dir = Path(features["dir"])
    result = train_two_tower(etl_dir, RetrievalConfig(), settings.run_dir(run_date) / "retrieval")
    metrics = evaluate_retrieval(result.model_path, etl_dir)
    log.info("retrieval: %s", {k: round(v, 4) for k, v in metrics.items()})
    return {
        "model_path": str(result.model_path),
        "catalogue_path": str(result.catalogue_path),
        "metrics": {f"retrieval_{k}": float(v) for k, v in metrics.items()},
    }


def evaluate(run_date: str, features: Stage, trained: Stage, settings: Settings) -> Stage:
    """Ranking metrics of the model and of the popularity baseline on the same test set."""
    from training import EvalInputs
    from training import evaluate as evaluate_model

    data = _train_inputs(features)
    report = evaluate_model(
        Path(trained["model_path"]),
        EvalInputs(train_dir=data["train_dir"], test_dir=Path(features["test"]), schema_path=data["schema_path"]),
    )
    metrics = report.to_dict()
    oracle = _oracle_auc(features, settings)
    if oracle is not None:
        metrics["oracle_auc"] = oracle
    (settings.run_dir(run_date) / "eval.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def register(
    run_date: str,
    validated: Stage,
    features: Stage,
    trained: Stage,
    evaluated: Stage,
    settings: Settings,
    retrieval: Stage | None = None,
) -> Stage:
    """Log the run to MLflow (params, curves, metrics, lineage, artifacts) and register a version."""
    from registry import Lineage, data_hash, git_sha, log_training_run, register_model

    artifacts = {
        "schema.json": Path(features["schema"]),
        "workflow": Path(features["workflow"]),
        "validation/report.json": Path(validated["report"]),
        "validation/data_docs": Path(validated["data_docs"]),
    }
    if retrieval is not None:
        artifacts["retrieval/two_tower.pt"] = Path(retrieval["model_path"])
        artifacts["retrieval/catalogue.parquet"] = Path(retrieval["catalogue_path"])
        evaluated = evaluated | retrieval["metrics"]
    lineage = Lineage(
        git_sha=git_sha(),
        data_hash=data_hash([Path(validated["events"])]),
        # Promotion compares logged metrics only between runs evaluated on the same test set.
        eval_set_hash=data_hash(sorted(Path(features["test"]).glob("*.parquet"))),
        run_date=run_date,
        input_paths=[validated["events"]],
    )
    run_id = log_training_run(
        tracking_uri=settings.mlflow_tracking_uri,
        experiment=settings.model_name,
        params=trained["config"] | {"run_date": run_date},
        history=trained["history"],
        eval_metrics=evaluated,
        model_path=Path(trained["model_path"]),
        artifacts=artifacts,
        lineage=lineage,
        artifact_root=settings.mlflow_artifact_root,
        tags={"n_in": str(validated["n_in"]), "n_quarantined": str(validated["n_quarantined"]),
              **unreadable_tags(validated.get("unreadable_files", []))},
    )
    version = register_model(settings.mlflow_tracking_uri, run_id, settings.model_name)
    return {"run_id": run_id, "version": str(version)}


def promote(features: Stage, registered: Stage, settings: Settings) -> Stage:
    """Move alias `champion` to the new version only if it beats champion and popularity baseline.

    A champion evaluated on another test set is re-scored on this run's test set first.
    """
    from registry import promote as promote_version
    from registry.reevaluate import reevaluator
    from training import EvalInputs

    data = _train_inputs(features)
    eval_inputs = EvalInputs(train_dir=data["train_dir"], test_dir=Path(features["test"]), schema_path=data["schema_path"])
    decision = promote_version(
        settings.mlflow_tracking_uri,
        settings.model_name,
        registered["version"],
        reevaluate=reevaluator(settings.mlflow_tracking_uri, eval_inputs),
    )
    log.info("promote: %s", decision.reason)
    return _jsonable(asdict(decision)) | {"version": registered["version"]}


def _train_inputs(features: Stage) -> dict[str, Path]:
    return {
        "train_dir": Path(features["train"]),
        "valid_dir": Path(features["valid"]),
        "schema_path": Path(features["schema"]),
    }


def _oracle_auc(features: Stage, settings: Settings) -> float | None:
    """The generator's ceiling on the test split, when the raw data came from `etl.synthetic`."""
    manifest = settings.raw_dir / "manifest.json"
    if not manifest.exists():
        return None
    from etl.synthetic import GroundTruth, oracle_auc
    import pandas as pd

    test = pd.read_parquet(features["test"], columns=["user_id_raw", "product_id_raw", "label"])
    impressions = test.rename(columns={"user_id_raw": "user_id", "product_id_raw": "product_id"})
    return float(oracle_auc(GroundTruth.from_manifest(manifest), impressions))


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
