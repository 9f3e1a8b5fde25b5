"""The nightly training run's stages, as plain functions over paths: the DAG, the CLI and tests call these.

Each function takes the run date (the DAG's logical date, `YYYY-MM-DD`), `Settings`, and the
small JSON dicts the previous stages returned (they travel as XComs), and returns such a dict.
Outputs go under `settings.run_dir(run_date)`, so re-running a date overwrites only its own run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
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
    outputs = run_etl(Path(validated["events"]), out_dir, EtlConfig(scheduler=settings.dask_scheduler))
    return {
        "dir": str(out_dir),
        "train": str(outputs.train_dir),
        "valid": str(outputs.valid_dir),
        "test": str(outputs.test_dir),
        "schema": str(outputs.schema_path),
        "workflow": str(outputs.workflow_dir),
        "rows": _jsonable(outputs.rows),
    }


def _nightly_task(validated: Stage, settings: Settings, with_task: bool = True):  # type: ignore[no-untyped-def]
    """The night's held-out split (the last `test_days` days of the window, asked as `eval_split` says),
    the events the recommender is fitted on (those before the held-out days), and the evaluation task."""
    import pandas as pd

    from training.quality import EventWeights, build_task, held_out_start, last_days_split

    events = pd.read_parquet(validated["events"], columns=["user_id", "product_id", "event_type", "event_time",
                                                           "user_session"])
    split = last_days_split(events, settings.test_days, by=settings.eval_split)
    fit_events = split.train[(split.train["event_time"] < held_out_start(events, settings.test_days)).to_numpy()]
    weights = EventWeights.parse(settings.event_weights)
    task = build_task(split, weights, settings.exclude) if with_task else None  # type: ignore[arg-type]
    return split, fit_events, weights, task


def train(run_date: str, validated: Stage, settings: Settings) -> Stage:
    """Fit the served recommender (candidate sources + DLRM ranker) on the window before the test days."""
    from training.ranker import MODEL_FILE, SCHEMA_FILE, RankerConfig, fit_recommender

    split, fit_events, weights, _ = _nightly_task(validated, settings, with_task=False)
    # The ranker's held-out cuts ask the question the night is evaluated on.
    config = RankerConfig(epochs=max(settings.train_epochs, 1) * 5,
                          split="session_rest" if settings.eval_split == "session_rest" else "user_holdout")
    fitted = fit_recommender(fit_events, split.items, config, weights, settings.exclude)  # type: ignore[arg-type]
    out = fitted.save(settings.run_dir(run_date) / "model")
    log.info("train: served mode %s, shares %s", fitted.recommender.mode,
             {k: round(v, 3) for k, v in fitted.recommender.shares.items()})
    return {
        "model_dir": str(out),
        "model_path": str(out / MODEL_FILE),
        "schema": str(out / SCHEMA_FILE),
        "history": fitted.history,
        "mode": fitted.recommender.mode,
        "config": _jsonable(asdict(config)) | {"event_weights": settings.event_weights, "exclude": settings.exclude,
                                               "test_days": settings.test_days, "eval_split": settings.eval_split},
    }


def train_retrieval(run_date: str, features: Stage, settings: Settings) -> Stage:
    """Train the two-tower candidate model and score it on the full catalogue against popularity."""
    from training.retrieval import RetrievalConfig, evaluate_retrieval
    from training.retrieval import train_retrieval as train_two_tower

    etl_dir = Path(features["dir"])
    from training.quality import EventWeights

    weights = EventWeights.parse(settings.event_weights)
    # Views count as much against a purchase in its loss as they do in the recommender's matrices.
    config = RetrievalConfig(view_weight=weights.view / weights.purchase if weights.purchase > 0 else 0.0)
    result = train_two_tower(etl_dir, config, settings.run_dir(run_date) / "retrieval")
    metrics = evaluate_retrieval(result.model_path, etl_dir)
    log.info("retrieval: %s", {k: round(v, 4) for k, v in metrics.items()})
    return {
        "model_path": str(result.model_path),
        "catalogue_path": str(result.catalogue_path),
        "metrics": {f"retrieval_{k}": float(v) for k, v in metrics.items()},
    }


def evaluate(run_date: str, validated: Stage, trained: Stage, settings: Settings) -> Stage:
    """The served path against the classic baselines on the full catalogue, same users (training.compare)."""
    import pandas as pd

    from registry.plots import comparison_plots
    from training.compare import SERVED, compare, oracle_scorer
    from training.ranker import FittedRecommender

    _, _, _, task = _nightly_task(validated, settings)
    fitted = FittedRecommender.load(Path(trained["model_dir"]))
    truth = planted_truth(settings)
    extra = {"oracle": oracle_scorer(truth, task)} if truth is not None else None
    comparison = compare(task, fitted.recommender, fitted.scorer(), extra=extra)
    out = settings.run_dir(run_date) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    k, best = comparison.k, comparison.best_baseline
    per_user = pd.DataFrame({"user_id": task.users} | {name: r.metrics.ndcg for name, r in comparison.results.items()})
    champion, champion_ndcg = _versus_champion(task, comparison.results[SERVED].metrics.ndcg, settings, k)
    if champion_ndcg is not None:
        per_user["champion"] = champion_ndcg
    per_user.to_parquet(out / "per_user_ndcg.parquet", index=False)
    served = comparison.results[SERVED].metrics.ndcg.mean()
    versus = comparison.versus[best]
    metrics = comparison.metrics() | {
        f"ndcg_at_{k}": float(served),
        f"baseline_ndcg_at_{k}": float(comparison.results[best].metrics.ndcg.mean()),
        f"vs_baseline_ndcg_at_{k}_ci_low": versus.low,
        f"vs_baseline_ndcg_at_{k}_ci_high": versus.high,
        "cold_test_users": float(task.n_skipped_cold),
    }
    if champion is not None:
        metrics |= {f"champion_ndcg_at_{k}": champion["champion"],
                    f"vs_champion_ndcg_at_{k}_ci_low": champion["diff_ci_low"],
                    f"vs_champion_ndcg_at_{k}_ci_high": champion["diff_ci_high"]}
    (out / "comparison.json").write_text(json.dumps({"metrics": metrics, "best_baseline": best, "champion": champion,
                                                     "skipped": comparison.skipped}, indent=2))
    comparison_plots(comparison, out / "plots")
    log.info("evaluate: served ndcg@%d %.4f vs %s %.4f, difference interval [%+.4f, %+.4f], %d users", k, served,
             best, metrics[f"baseline_ndcg_at_{k}"], versus.low, versus.high, comparison.n_users)
    report = drift(fitted, task, out, settings, run_date)
    return {"metrics": metrics | report.metrics(), "best_baseline": best, "champion": champion, "dir": str(out),
            "drift": report.tags()}


def _versus_champion(task: Any, challenger_ndcg: Any, settings: Settings,
                     k: int) -> tuple[dict[str, Any] | None, Any]:
    """The registered champion's served path scored on tonight's task beside the challenger, paired per
    user: (the promotion gate's evidence as plain numbers, the champion's per-user NDCG); (None, None)
    while there is no champion. Scoring is evaluation, so it happens here, not in registry/."""
    import tempfile

    from contracts import RECOMMENDER_DIR
    from registry.models import download_run_artifact
    from registry.promotion import champion_version
    from training.compare import versus_champion
    from training.ranker import FittedRecommender

    version = champion_version(settings.mlflow_tracking_uri, settings.model_name)
    if version is None:
        return None, None
    with tempfile.TemporaryDirectory() as tmp:
        local = download_run_artifact(settings.mlflow_tracking_uri, settings.model_name, version, RECOMMENDER_DIR,
                                      Path(tmp))
        fitted = FittedRecommender.load(local)
        per_user, diff = versus_champion(task, challenger_ndcg, fitted.recommender, fitted.scorer(), k)
    log.info("evaluate: champion v%s on the same %d users: ndcg@%d %.4f, difference interval [%+.4f, %+.4f]",
             version, len(per_user), k, per_user.mean(), diff.low, diff.high)
    evidence = {"version": version, "metric": f"ndcg_at_{k}", "champion": float(per_user.mean()), "diff": diff.mean,
                "diff_ci_low": diff.low, "diff_ci_high": diff.high, "users": int(len(per_user))}
    return evidence, per_user


def drift(fitted, task, out: Path, settings: Settings, run_date: str | None = None):  # type: ignore[no-untyped-def]
    """Tonight's drift profile (registry.drift: ranker inputs and scores on the evaluation users, item
    embedding and factor norms) saved as eval/drift_profile.npz, compared with the champion's night
    (its run's logged profile), or, with no champion yet, the latest earlier night's under
    runs/: PSI per figure in eval/drift.json, plots in eval/plots/drift_*.png; the level against the
    RECSYS_DRIFT_WARN / RECSYS_DRIFT_BLOCK thresholds is logged here and tagged by `register`."""
    from registry.drift import (PROFILE_FILE, REPORT_FILE, champion_profile, compare_profiles,
                                dlrm_item_embeddings, load_profile, no_reference, profile, save_profile)
    from registry.plots import drift_plots

    tonight = profile(fitted.recommender, fitted.scorer(), task.history, task.excluded,
                      None if fitted.ranker is None else dlrm_item_embeddings(fitted.ranker))
    save_profile(tonight, out / PROFILE_FILE)
    found = champion_profile(settings.mlflow_tracking_uri, settings.model_name)
    earlier = previous_drift_profile(run_date, settings) if found is None and run_date else None
    if earlier is not None:
        found = load_profile(earlier), f"night {earlier.parts[-3]} (no champion yet)"
    if found is None:
        report = no_reference(settings.drift_warn, settings.drift_block)
    else:
        reference, name = found
        report = compare_profiles(reference, tonight, settings.drift_warn, settings.drift_block, reference_name=name)
        drift_plots(report, reference, tonight, out / "plots")
    (out / REPORT_FILE).write_text(report.to_json())
    (log.warning if report.level in ("warn", "block") else log.info)("evaluate: %s", report.reason)
    return report


def previous_drift_profile(run_date: str, settings: Settings) -> Path | None:
    """The drift profile of the latest night before `run_date` under runs/, if any."""
    runs = settings.home / "runs"
    earlier = sorted(p for p in runs.glob("*/eval/drift_profile.npz") if p.parts[-3] < run_date) if runs.is_dir() else []
    return earlier[-1] if earlier else None


def planted_truth(settings: Settings):  # type: ignore[no-untyped-def]
    """The generator's truth when the raw data came from `etl.synthetic`; None for real data, whose
    manifest (etl.public_data) names a source but no generator config."""
    manifest = settings.raw_dir / "manifest.json"
    if not manifest.exists() or not json.loads(manifest.read_text()).get("config"):
        return None
    from etl.synthetic import GroundTruth

    return GroundTruth.from_manifest(manifest)


def register(
    run_date: str,
    validated: Stage,
    features: Stage,
    trained: Stage,
    evaluated: Stage,
    retrieval: Stage | None,
    settings: Settings,
) -> Stage:
    """Log the run to MLflow (params, curves, the comparison with intervals and plots, lineage,
    artifacts) and register the ranker, with the recommender it ranks for, as a new version."""
    from registry import Lineage, data_hash, git_sha, log_training_run, register_model
    from registry.promotion import EVAL_SPLIT_TAG, RUN_KEY_TAG, registered_for
    from contracts import RECOMMENDER_DIR

    artifacts = {
        "schema.json": Path(trained["schema"]),
        "workflow": Path(features["workflow"]),
        RECOMMENDER_DIR: Path(trained["model_dir"]),
        "eval": Path(evaluated["dir"]),
        "validation/report.json": Path(validated["report"]),
        "validation/data_docs": Path(validated["data_docs"]),
    }
    metrics = dict(evaluated["metrics"])
    if retrieval is not None:
        artifacts["retrieval/two_tower.pt"] = Path(retrieval["model_path"])
        artifacts["retrieval/catalogue.parquet"] = Path(retrieval["catalogue_path"])
        metrics |= retrieval["metrics"]
    lineage = Lineage(
        git_sha=git_sha(),
        data_hash=data_hash([Path(validated["events"])]),
        eval_set_hash=data_hash([Path(validated["events"])]) + f":last{settings.test_days}d"
        + ("" if settings.eval_split == "window" else f":{settings.eval_split}"),
        run_date=run_date,
        input_paths=[validated["events"]],
    )
    # A retried task (a worker killed after registering, before Airflow recorded it) finds the first
    # try's version instead of registering the same night and model twice.
    key = f"{run_date}:{lineage.data_hash}:{data_hash([Path(trained['model_path'])])}"
    found = registered_for(settings.mlflow_tracking_uri, settings.model_name, key)
    if found is not None:
        log.info("register: this night's model is already run %s, version %s", *found)
        return {"run_id": found[0], "version": found[1]}
    run_id = log_training_run(
        tracking_uri=settings.mlflow_tracking_uri,
        experiment=settings.model_name,
        params=trained["config"] | {"run_date": run_date, "served_mode": trained["mode"]},
        history=trained["history"],
        eval_metrics=metrics,
        model_path=Path(trained["model_path"]),
        artifacts=artifacts,
        lineage=lineage,
        artifact_root=settings.mlflow_artifact_root,
        tags={"n_in": str(validated["n_in"]), "n_quarantined": str(validated["n_quarantined"]),
              "eval.best_baseline": evaluated["best_baseline"], "served_mode": trained["mode"],
              EVAL_SPLIT_TAG: settings.eval_split,
              RUN_KEY_TAG: key, **evaluated.get("drift", {}),
              **unreadable_tags(validated.get("unreadable_files", []))},
    )
    version = register_model(settings.mlflow_tracking_uri, run_id, settings.model_name)
    return {"run_id": run_id, "version": str(version)}


def promote(run_date: str, evaluated: Stage, registered: Stage, settings: Settings) -> Stage:
    """Move alias `champion` to the new version only on evidence (registry.promote): enough users, and
    intervals above zero against the best baseline and the champion, which `evaluate` scored on the same
    users (the gate is handed those numbers; it scores nothing itself)."""
    from registry import ChampionEvidence
    from registry import promote as promote_version

    champion = evaluated.get("champion")
    decision = promote_version(
        settings.mlflow_tracking_uri,
        settings.model_name,
        registered["version"],
        versus_champion=None if champion is None else ChampionEvidence(**champion),
        min_users=settings.min_eval_users,
        drift_block=settings.drift_block,
    )
    log.info("promote: %s (evidence %s)", decision.reason, decision.evidence)
    return _jsonable(asdict(decision)) | {"version": registered["version"]}


@dataclass(frozen=True)
class StageSpec:
    """One nightly stage: its function `run(run_date, *outputs of needs, settings)` and the stages it reads."""

    name: str
    run: Callable[..., Stage]
    needs: tuple[str, ...] = ()


# The one declared order of the nightly run: the DAG builds its tasks from it and `python -m cli
# nightly` runs it in-process (tests/test_dags.py checks the DAG against it).
NIGHTLY_STAGES: tuple[StageSpec, ...] = (
    StageSpec("ingest", ingest),
    StageSpec("validate", validate, ("ingest",)),
    StageSpec("fit_workflow", fit_workflow, ("validate",)),
    StageSpec("train", train, ("validate",)),
    StageSpec("evaluate", evaluate, ("validate", "train")),
    StageSpec("train_retrieval", train_retrieval, ("fit_workflow",)),
    StageSpec("register", register, ("validate", "fit_workflow", "train", "evaluate", "train_retrieval")),
    StageSpec("promote", promote, ("evaluate", "register")),
)


def run_nightly(run_date: str, settings: Settings,
                progress: Callable[[str, Stage], None] | None = None) -> dict[str, Stage]:
    """Every stage in order, in-process; returns each stage's output by name."""
    outputs: dict[str, Stage] = {}
    for stage in NIGHTLY_STAGES:
        outputs[stage.name] = stage.run(run_date, *(outputs[n] for n in stage.needs), settings)
        if progress is not None:
            progress(stage.name, outputs[stage.name])
    return outputs


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
