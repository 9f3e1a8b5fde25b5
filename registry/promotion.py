"""Registration of logged models and the promotion gate that moves the `champion` alias.

A new version gets alias `challenger`. `promote` moves `champion` to it only on evidence: enough
evaluated users, and bootstrap intervals of the paired NDCG differences to the best classic baseline
and to the current champion (scored on the same users by the nightly evaluate stage) that lie above
zero. The gate only decides over numbers it is handed or that the run logged; it scores nothing.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from registry.errors import MetricMissing, ModelNotFound, RegistryError
from registry.tracking import TAG_MODEL_URI, tracking

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass(frozen=True)
class ChampionEvidence:
    """The champion's served path scored on the challenger's evaluation users, paired per user.

    Built by whoever evaluates (the nightly `evaluate` stage, `training.compare.versus_champion`)
    from per-user metric arrays; the gate reads only these numbers.
    """

    version: str  # the champion version that was scored; the gate refuses evidence about another one
    metric: str  # what was compared, e.g. "ndcg_at_10"; must be the gate's metric
    champion: float  # its mean metric on those users
    diff: float  # mean of (challenger - champion) per user
    diff_ci_low: float  # bootstrap interval of that mean difference
    diff_ci_high: float
    users: int  # users both were scored on


@dataclass(frozen=True)
class PromotionDecision:
    """Outcome of the gate; `evidence` holds the numbers it was decided on (users, differences, intervals)."""

    promoted: bool
    reason: str
    version: str
    metric: str
    challenger: float
    champion: float | None
    baseline: float
    champion_version: str | None = None  # the champion before this decision
    evidence: dict[str, float] = field(default_factory=dict)
    eval_split: str = "window"  # how the held-out days were asked (the run's tag eval.split; RECSYS_EVAL_SPLIT)


def register_model(tracking_uri: str, run_id: str, model_name: str) -> str:
    """Register the model logged by `run_id` as a new version of `model_name`, alias `challenger`.

    Returns the version number as a string.
    """
    with tracking(tracking_uri) as client:
        try:
            run = client.get_run(run_id)
        except MlflowException as exc:
            raise ModelNotFound(f"run {run_id} not found at {tracking_uri}: {exc}") from exc
        model_uri = run.data.tags.get(TAG_MODEL_URI)
        if not model_uri:
            raise ModelNotFound(
                f"run {run_id} has no logged model (tag {TAG_MODEL_URI}); log it with "
                f"registry.log_training_run"
            )
        version = mlflow.register_model(model_uri, model_name).version
        client.set_registered_model_alias(model_name, CHALLENGER, version)
        logger.info("registered %s v%s from run %s as challenger", model_name, version, run_id)
        return str(version)


RUN_KEY_TAG = "registration.key"  # what makes a registration the same one when a task is retried
EVAL_SPLIT_TAG = "eval.split"  # the run's evaluation split ("window" or "session_rest"), recorded with the decision


def registered_for(tracking_uri: str, model_name: str, key: str) -> tuple[str, str] | None:
    """(run_id, version) of a finished run tagged `registration.key` = key that `model_name` has a
    version of; None when there is none. Lets a retried task find what its first try registered."""
    with tracking(tracking_uri) as client:
        experiment = client.get_experiment_by_name(model_name)
        if experiment is None:
            return None
        runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}'",
                                  max_results=10)
        for run in runs:
            versions = client.search_model_versions(f"run_id = '{run.info.run_id}'")
            named = [v for v in versions if v.name == model_name]
            if run.info.status == "FINISHED" and named:
                return run.info.run_id, str(min(int(v.version) for v in named))
    return None


def get_version(client: MlflowClient, name: str, version_or_alias: str) -> ModelVersion:
    """Version by number or alias; `ModelNotFound` names what exists when it does not."""
    try:
        if str(version_or_alias).isdigit():
            return client.get_model_version(name, str(version_or_alias))
        return client.get_model_version_by_alias(name, version_or_alias)
    except MlflowException as exc:
        raise ModelNotFound(
            f"model '{name}' has no version or alias '{version_or_alias}' "
            f"({exc.error_code}); register a model first (registry.register_model) and "
            f"promote it (registry.promote) to set '{CHAMPION}'"
        ) from exc


def champion_version(tracking_uri: str, model_name: str) -> str | None:
    """The version alias `champion` points at; None while there is none."""
    with tracking(tracking_uri) as client:
        mv = _champion(client, model_name)
        return None if mv is None else str(mv.version)


def resolve_version(tracking_uri: str, model_name: str, version_or_alias: str) -> str:
    """The version number behind a number or an alias (`champion`, `challenger`)."""
    with tracking(tracking_uri) as client:
        return str(get_version(client, model_name, version_or_alias).version)


def _champion(client: MlflowClient, name: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(exc).lower():
            return None
        raise RegistryError(f"could not read alias '{CHAMPION}' of '{name}': {exc}") from exc


def _metric(metrics: dict[str, float], key: str, where: str) -> float:
    value = metrics.get(key)
    if value is None or not math.isfinite(float(value)):
        raise MetricMissing(
            f"{where} has no finite metric '{key}' (has: {sorted(metrics)[:20]}...); log the full-catalogue "
            f"comparison (training.compare) with registry.log_training_run"
        )
    return float(value)


def _record(client: MlflowClient, name: str, mv: ModelVersion, decision: PromotionDecision) -> None:
    tags = {
        "promotion.decision": "promoted" if decision.promoted else "rejected",
        "promotion.reason": decision.reason,
        "promotion.metric": decision.metric,
        "promotion.challenger": f"{decision.challenger:.6f}",
        "promotion.baseline": f"{decision.baseline:.6f}",
        "promotion.champion": "" if decision.champion is None else f"{decision.champion:.6f}",
        "promotion.champion_version": decision.champion_version or "",
        "promotion.decided_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "promotion.eval_split": decision.eval_split,
    } | {f"promotion.evidence.{k}": f"{v:.6g}" for k, v in decision.evidence.items()}
    for key, value in tags.items():
        client.set_model_version_tag(name, mv.version, key, value)
        if mv.run_id:
            client.set_tag(mv.run_id, key, value)


def promote(
    tracking_uri: str,
    model_name: str,
    version: str,
    metric: str = "ndcg_at_10",
    versus_champion: ChampionEvidence | None = None,
    min_users: int = 100,
    drift_block: float | None = None,
) -> PromotionDecision:
    """Move alias `champion` to `version` only on evidence, and record why either way.

    The challenger's run must carry the full-catalogue comparison (training.compare): `metric` (the
    served path), `baseline_<metric>` (the best classic baseline on the same users), `eval_users` and
    the bootstrap interval of the paired difference, `vs_baseline_<metric>_ci_low/_high`. The gate:
    1. fewer than `min_users` evaluated users -> not enough evidence, champion kept;
    2. the interval of (served - best baseline) must lie above 0, not merely the mean;
    3. a current champion must have been scored on the challenger's users: `versus_champion`, evidence
       about that very version (paired difference and its interval); the challenger must beat it with
       an interval above 0. Without such evidence it is not promoted (fail closed).
    With `drift_block`, a run whose `drift_psi_max` (registry.drift: PSI of the served path's inputs
    against the champion's night) reaches it is refused before any comparison, whatever its metrics.
    The decision and its evidence are tags `promotion.*` on the version and its run.
    """
    with tracking(tracking_uri) as client:
        mv = get_version(client, model_name, version)
        run = client.get_run(mv.run_id)
        where = f"{model_name} v{mv.version} (run {mv.run_id})"
        metrics = run.data.metrics
        score = _metric(metrics, metric, where)
        baseline = _metric(metrics, f"baseline_{metric}", where)
        users = _metric(metrics, "eval_users", where)
        low = _metric(metrics, f"vs_baseline_{metric}_ci_low", where)
        high = _metric(metrics, f"vs_baseline_{metric}_ci_high", where)
        champion_mv = _champion(client, model_name)
        evidence = {"users": users, "vs_baseline": score - baseline, "vs_baseline_ci_low": low,
                    "vs_baseline_ci_high": high}
        best = run.data.tags.get("eval.best_baseline", "the best baseline")

        def decide(promoted: bool, reason: str, champion: float | None) -> PromotionDecision:
            decision = PromotionDecision(
                promoted, reason, str(mv.version), metric, score, champion, baseline,
                None if champion_mv is None else str(champion_mv.version), dict(evidence),
                run.data.tags.get(EVAL_SPLIT_TAG, "window"),
            )
            if promoted:
                client.set_registered_model_alias(model_name, CHAMPION, mv.version)
            _record(client, model_name, mv, decision)
            logger.info("promotion of %s v%s: %s", model_name, mv.version, reason)
            return decision

        if users < min_users:
            return decide(False, f"not enough evidence: {users:.0f} evaluated users < {min_users}; "
                                 "champion kept", None)
        drifted = metrics.get("drift_psi_max")
        if drift_block is not None and drifted is not None and math.isfinite(drifted) and drifted >= drift_block:
            evidence["drift_psi_max"] = float(drifted)
            worst = run.data.tags.get("drift.worst", "a figure")
            return decide(False, f"drift blocks promotion: PSI of {worst} is {drifted:.3f} >= {drift_block} against "
                                 f"{run.data.tags.get('drift.reference') or 'the champion'}'s night "
                                 "(registry.drift); champion kept", None)
        if low <= 0:
            return decide(False, f"{metric} {score:.4f} does not beat {best} {baseline:.4f} on evidence: "
                                 f"difference {score - baseline:+.4f}, 95% interval [{low:+.4f}, {high:+.4f}] "
                                 f"{_versus_zero(low, high)} ({users:.0f} users)", None)
        if champion_mv is None:
            return decide(True, f"no champion; {metric} {score:.4f} beats {best} {baseline:.4f}, difference "
                                f"interval [{low:+.4f}, {high:+.4f}] over {users:.0f} users", None)
        if str(champion_mv.version) == str(mv.version):
            return decide(False, f"version {mv.version} is already the champion", score)
        if versus_champion is None:
            # Fail closed: a challenger that cannot be compared on the same users does not take over.
            return decide(False, f"champion v{champion_mv.version} not re-evaluated on the challenger's users "
                                 "(pass versus_champion=...); champion kept", None)
        if str(versus_champion.version) != str(champion_mv.version):
            return decide(False, f"champion is v{champion_mv.version} but the evidence re-evaluated "
                                 f"v{versus_champion.version} (the champion moved since evaluation); champion kept",
                          None)
        versus = versus_champion
        if versus.metric != metric:
            raise MetricMissing(f"evidence about champion v{versus.version} compares {versus.metric}, the gate {metric}")
        if not all(math.isfinite(v) for v in (versus.champion, versus.diff_ci_low, versus.diff_ci_high)):
            raise MetricMissing(f"evidence about champion v{versus.version} is not finite: {versus}")
        champion_score, c_low, c_high = float(versus.champion), float(versus.diff_ci_low), float(versus.diff_ci_high)
        evidence |= {"vs_champion": score - champion_score, "vs_champion_ci_low": c_low,
                     "vs_champion_ci_high": c_high, "champion_users": float(versus.users)}
        if c_low <= 0:
            return decide(False, f"{metric} {score:.4f} does not beat champion v{champion_mv.version} "
                                 f"({champion_score:.4f}) on evidence: interval [{c_low:+.4f}, {c_high:+.4f}] "
                                 f"{_versus_zero(c_low, c_high)}",
                          champion_score)
        return decide(True, f"{metric} {score:.4f} beats champion v{champion_mv.version} ({champion_score:.4f}), "
                            f"interval [{c_low:+.4f}, {c_high:+.4f}], and {best} {baseline:.4f}", champion_score)


def _versus_zero(low: float, high: float) -> str:
    """How a difference interval that does not lie above 0 stands: worse on evidence, or a tie."""
    return "lies below 0" if high < 0 else "includes 0"
