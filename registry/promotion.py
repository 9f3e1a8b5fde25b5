"""Registration of logged models and the promotion gate that moves the `champion` alias.

A new version gets alias `challenger`. `promote` moves `champion` to it only when its eval
metric beats the popularity baseline of its own run and the current champion's metric on the
same eval set (re-evaluating the champion on the challenger's test set when the sets differ).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from registry.errors import EvalSetMismatch, MetricMissing, ModelNotFound, RegistryError
from registry.lineage import TAG_EVAL_SET_HASH
from registry.tracking import TAG_MODEL_URI, tracking

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
Reevaluate = Callable[[str], dict[str, float]]  # model URI -> metrics on the challenger's test set


@dataclass(frozen=True)
class PromotionDecision:
    """Outcome of the gate; the metrics are the values compared (None where not applicable)."""

    promoted: bool
    reason: str
    version: str
    metric: str
    challenger: float
    champion: float | None
    baseline: float
    champion_version: str | None = None  # the champion before this decision


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
            f"{where} has no finite metric '{key}' (has: {sorted(metrics)}); log eval metrics "
            f"'{key}' and 'baseline_<metric>' with registry.log_training_run"
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
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, mv.version, key, value)
        if mv.run_id:
            client.set_tag(mv.run_id, key, value)


def promote(
    tracking_uri: str,
    model_name: str,
    version: str,
    metric: str = "ndcg_at_10",
    reevaluate: Reevaluate | None = None,
) -> PromotionDecision:
    """Move alias `champion` to `version` if it beats the baseline and the current champion.

    reevaluate: called with the champion's `models:/` URI when the champion's eval-set hash
    differs from the challenger's (or either is unknown); must return metrics on the
    challenger's test set (see `registry.reevaluate.reevaluator`). Without it such a
    challenger is not promoted (reason says why): the gate never compares across sets.
    The decision is recorded as `promotion.*` tags on the version and its run.
    """
    with tracking(tracking_uri) as client:
        mv = get_version(client, model_name, version)
        run = client.get_run(mv.run_id)
        where = f"{model_name} v{mv.version} (run {mv.run_id})"
        score = _metric(run.data.metrics, metric, where)
        baseline = _metric(run.data.metrics, f"baseline_{metric}", where)
        champion_mv = _champion(client, model_name)

        def decide(promoted: bool, reason: str, champion: float | None) -> PromotionDecision:
            decision = PromotionDecision(
                promoted, reason, str(mv.version), metric, score, champion, baseline,
                None if champion_mv is None else str(champion_mv.version),
            )
            if promoted:
                client.set_registered_model_alias(model_name, CHAMPION, mv.version)
            _record(client, model_name, mv, decision)
            logger.info("promotion of %s v%s: %s", model_name, mv.version, reason)
            return decision

        if score <= baseline:
            reason = f"{metric} {score:.4f} does not beat baseline {baseline:.4f}"
            return decide(False, reason, None)
        if champion_mv is None:
            return decide(
                True, f"no champion; {metric} {score:.4f} beats baseline {baseline:.4f}", None
            )
        if str(champion_mv.version) == str(mv.version):
            return decide(False, f"version {mv.version} is already the champion", score)

        try:
            champion_score = _champion_score(
                client, model_name, champion_mv, run.data.tags.get(TAG_EVAL_SET_HASH), metric,
                reevaluate,
            )
        except EvalSetMismatch as exc:
            # Fail closed: a challenger that cannot be compared fairly does not take over.
            logger.warning("%s", exc)
            return decide(False, str(exc), None)
        if score <= champion_score:
            return decide(
                False,
                f"{metric} {score:.4f} does not beat champion v{champion_mv.version} "
                f"({champion_score:.4f})",
                champion_score,
            )
        return decide(
            True,
            f"{metric} {score:.4f} beats champion v{champion_mv.version} ({champion_score:.4f}) "
            f"and baseline {baseline:.4f}",
            champion_score,
        )


def _champion_score(
    client: MlflowClient,
    name: str,
    champion_mv: ModelVersion,
    eval_set_hash: str | None,
    metric: str,
    reevaluate: Reevaluate | None,
) -> float:
    champion_run = client.get_run(champion_mv.run_id)
    champion_hash = champion_run.data.tags.get(TAG_EVAL_SET_HASH)
    where = f"champion {name} v{champion_mv.version}"
    if eval_set_hash and champion_hash == eval_set_hash:
        return _metric(champion_run.data.metrics, metric, where)
    if reevaluate is None:
        raise EvalSetMismatch(
            f"{where} was evaluated on eval set {champion_hash!r}, the challenger on "
            f"{eval_set_hash!r}; pass reevaluate=<callable(model_uri) -> metrics> to score the "
            f"champion on the challenger's test set"
        )
    uri = f"models:/{name}/{champion_mv.version}"
    logger.info("re-evaluating %s on the challenger's eval set %s", uri, eval_set_hash)
    return _metric(reevaluate(uri), metric, f"re-evaluation of {where}")
