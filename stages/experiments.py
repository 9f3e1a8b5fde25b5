"""The evaluate_experiment run: figures of the running experiment -> decision -> MLflow run -> promote or roll back.

Called by `dags/evaluate_experiment.py` (daily) and by `python -m cli experiment evaluate`. The
decision is `registry.experiments.decide` (mSPRT with guardrails); this module reads the counts from
the API's database, logs one MLflow run per evaluation (per-arm figures, the test, a plot), and acts:

- promote: alias `champion` moves to the winning arm's registered version and the experiment ends
  (state `promoted`); the DAG then triggers `deploy_model` for `champion`, which makes it `current`.
- rollback: the experiment ends (state `rolled_back`); every customer is served the deployed
  champion again within RECSYS_EXPERIMENT_TTL_S; the alias is left where it was.
- continue: the decision (with the running always-valid p-values) is kept on the experiment.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from settings import Settings

log = logging.getLogger(__name__)

Stage = dict[str, Any]
MLFLOW_EXPERIMENT = "online-experiments"


def default_guardrails(settings: Settings) -> dict[str, Any]:
    return {"alpha": settings.experiment_alpha, "min_impressions": settings.experiment_min_impressions,
            "max_days": settings.experiment_max_days}


def evaluate(ds: str | None, settings: Settings, now: datetime | None = None, apply: bool = True) -> Stage:
    """Decide on the running experiment (if any) and act on the decision; returns what happened.

    Keys: outcome ("none", "continue", "promote", "rollback"), experiment, reason, and on a promotion
    `version` (the registered version now champion) and `deploy` True.
    """
    from api import experiments as api_experiments
    from api.store import Store
    from registry.experiments import ArmCounts, Guardrails, decide

    store = Store(settings.database_url)
    store.init_db()
    try:
        row = api_experiments.running(store)
        if row is None:
            log.info("evaluate_experiment: no experiment is running")
            return {"outcome": "none", "experiment": None, "reason": "no experiment is running"}
        now = now or datetime.now(timezone.utc)
        arms: dict[str, str] = json.loads(row.arms)
        guardrails = Guardrails.from_dict(default_guardrails(settings) | json.loads(row.guardrails or "{}"))
        counted = api_experiments.arm_counts(store, row.id)
        counts = {arm: ArmCounts(**{k: counted.get(arm, {}).get(k, 0) for k in ArmCounts.__dataclass_fields__})
                  for arm in arms}
        previous = (json.loads(row.decision) if row.decision else {}).get("running_p", {})
        decision = decide(counts, row.control, guardrails, row.started_at, now, previous)
        record = decision.to_dict() | {"evaluated_at": now.isoformat(), "running_p": {
            "primary": decision.primary.p_value if decision.primary else previous.get("primary", 1.0),
            "guardrail": decision.guardrail.p_value if decision.guardrail else previous.get("guardrail", 1.0)}}
        holdout = counted.get(api_experiments.HOLDOUT)
        run_id = _log_run(settings, row.id, ds, arms, guardrails.to_dict(), counts, holdout, record)
        result: Stage = {"outcome": decision.outcome, "experiment": row.id, "reason": decision.reason,
                         "run_id": run_id, "winner": decision.winner}
        if not apply:
            return result
        if decision.outcome == "promote":
            version = arms[str(decision.winner)]
            _move_champion(settings, version)
            api_experiments.end_experiment(store, row.id, "promoted", record)
            result |= {"version": version, "deploy": True}
        elif decision.outcome == "rollback":
            api_experiments.end_experiment(store, row.id, "rolled_back", record)
            result |= {"version": arms[row.control], "deploy": False}
        else:
            api_experiments.record_decision(store, row.id, record)
        log.info("evaluate_experiment %s: %s (%s)", row.id, decision.outcome, decision.reason)
        return result
    finally:
        store.dispose()


def _move_champion(settings: Settings, version: str) -> None:
    from registry import CHAMPION
    from registry.tracking import tracking

    with tracking(settings.mlflow_tracking_uri) as client:
        client.set_registered_model_alias(settings.model_name, CHAMPION, str(version))
        client.set_model_version_tag(settings.model_name, str(version), "experiment.promoted", "true")


def _log_run(settings: Settings, experiment_id: str, ds: str | None, arms: dict[str, str],
             guardrails: dict[str, Any], counts: dict[str, Any], holdout: dict[str, float] | None,
             record: dict[str, Any]) -> str:
    """One MLflow run per evaluation: params (arms, guardrails), per-arm figures, the test, a plot."""
    import mlflow

    from registry.experiments import figures
    from registry.tracking import _experiment_id, tracking

    with tracking(settings.mlflow_tracking_uri) as client:
        mlflow_experiment = _experiment_id(client, MLFLOW_EXPERIMENT, settings.mlflow_artifact_root)
        with mlflow.start_run(experiment_id=mlflow_experiment, run_name=f"{experiment_id}-{ds or 'manual'}") as run:
            mlflow.set_tags({"experiment.id": experiment_id, "experiment.outcome": record["outcome"],
                             "experiment.reason": record["reason"][:5000]})
            mlflow.log_params({f"arm.{a}": v for a, v in arms.items()} | {f"guardrail.{k}": v for k, v in guardrails.items()})
            for arm, c in counts.items():
                mlflow.log_metrics({f"{arm}.{k}": float(v) for k, v in asdict(figures(c)).items()})
            if holdout:
                mlflow.log_metric("holdout.impressions", float(holdout.get("impressions", 0)))
            for name in ("primary", "guardrail"):
                test = record.get(name)
                if test:
                    mlflow.log_metrics({f"{name}.{k}": float(v) for k, v in test.items()})
            mlflow.log_metric("days", float(record["days"]))
            with tempfile.TemporaryDirectory() as tmp:
                mlflow.log_artifact(str(_plot(counts, record, Path(tmp) / "arms.png")))
            mlflow.log_dict(record, "decision.json")
            return run.info.run_id


def _plot(counts: dict[str, Any], record: dict[str, Any], path: Path) -> Path:
    """Per-arm bars of the four figures, the test's interval in the title."""
    from registry import plots  # noqa: F401 - selects matplotlib's headless backend
    import matplotlib.pyplot as plt

    from registry.experiments import figures

    names = ["ctr", "cart_rate", "conversion_rate", "revenue_per_impression"]
    arms = sorted(counts)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3))
    for ax, name in zip(axes, names):
        ax.bar(arms, [getattr(figures(counts[a]), name) for a in arms], color=["#4c72b0", "#dd8452"][: len(arms)])
        ax.set_title(name)
        ax.grid(axis="y", alpha=0.3)
    primary = record.get("primary") or {}
    title = f"{record['outcome']}: {record['reason']}"
    if primary:
        title += f"\ndifference {primary['difference']:+.4f}, always-valid CI [{primary['low']:+.4f}, {primary['high']:+.4f}]"
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def start(settings: Settings, experiment_id: str, arms: dict[str, str], control: str,
          shares: dict[str, float] | None = None, holdout: float = 0.0,
          guardrails: dict[str, Any] | None = None, load_triton: bool = True) -> Stage:
    """Start an experiment between registered versions (numbers or aliases, e.g. champion/challenger).

    Each arm's version is packaged as a serving bundle (as a deploy does); with `load_triton` the local
    Triton is restarted serving the control's bundle with the other arm's as a second version, so both
    arms rank on one server. Shares default to an even split of the traffic outside the holdout.
    """
    from api import experiments as api_experiments
    from api.store import Store
    from stages import deploy
    from registry.experiments import Guardrails

    if control not in arms:
        raise api_experiments.ExperimentError(f"control {control!r} is not one of the arms {sorted(arms)}")
    shares = shares or {arm: (1.0 - holdout) / len(arms) for arm in arms}
    merged = default_guardrails(settings) | (guardrails or {})
    Guardrails.from_dict(merged)  # refuse a bad definition before anything is packaged
    api_experiments.validate_definition(experiment_id, arms, shares, holdout, control)
    bundles: dict[str, Stage] = {}
    for arm, ref in arms.items():
        bundles[arm] = deploy.package(deploy.resolve(ref, settings), settings)
    versions = {arm: b["version"] for arm, b in bundles.items()}
    if len(set(versions.values())) != len(versions):
        raise api_experiments.ExperimentError(f"both arms resolve to the same version: {versions}")
    endpoint = None
    if load_triton:
        from serving.local_triton import start_server

        others = [Path(b["bundle"]) for arm, b in bundles.items() if arm != control]
        handle = start_server(Path(bundles[control]["bundle"]), settings.triton_http_port, settings.triton_grpc_port,
                              settings.serving_dir / "triton", model_name=settings.triton_model_name, also=others)
        for b in bundles.values():
            deployment = json.loads((Path(b["bundle"]) / "deployment.json").read_text())
            deploy.smoke_test(Path(b["bundle"]), handle.http_url, settings.triton_model_name,
                              model_version=str(deployment["triton_version"]))
        endpoint = handle.http_url
    store = Store(settings.database_url)
    store.init_db()
    try:
        api_experiments.create_experiment(store, experiment_id, versions, shares, holdout, control, merged)
    finally:
        store.dispose()
    log.info("experiment %s started: arms %s, shares %s, holdout %s", experiment_id, versions, shares, holdout)
    return {"experiment": experiment_id, "arms": versions, "shares": shares, "holdout": holdout,
            "control": control, "guardrails": merged, "triton": endpoint}


def register_copy(settings: Settings, version: str) -> str:
    """Register the model behind `version` (number or alias) again as a new version of the same model:
    same run, same artifacts, tagged `experiment.copy_of`; no alias moves. Two such versions make an
    honest A/A test (identical weights: any difference between the arms is noise)."""
    from registry import resolve_version
    from registry.tracking import tracking

    number = resolve_version(settings.mlflow_tracking_uri, settings.model_name, version)
    with tracking(settings.mlflow_tracking_uri) as client:
        original = client.get_model_version(settings.model_name, number)
        copy = client.create_model_version(settings.model_name, source=original.source, run_id=original.run_id,
                                           tags={"experiment.copy_of": number},
                                           description=f"copy of version {number} for an A/A test")
    log.info("registered version %s of %s as a copy of version %s", copy.version, settings.model_name, number)
    return str(copy.version)


def stop(settings: Settings, experiment_id: str) -> Stage:
    """End a running experiment by hand (state `stopped`): everyone is served the deployed champion again."""
    from api import experiments as api_experiments
    from api.store import Store

    store = Store(settings.database_url)
    try:
        api_experiments.end_experiment(store, experiment_id, "stopped")
    finally:
        store.dispose()
    return {"experiment": experiment_id, "state": "stopped"}


def describe_all(settings: Settings) -> list[dict[str, Any]]:
    """What GET /experiments answers, read directly from the database."""
    from sqlalchemy import select

    from api import experiments as api_experiments
    from api.store import Experiment, Store

    store = Store(settings.database_url)
    store.init_db()
    try:
        with store.session() as session:
            rows = list(session.scalars(select(Experiment).order_by(Experiment.started_at.desc())))
        return [api_experiments.describe(store, row) for row in rows]
    finally:
        store.dispose()
