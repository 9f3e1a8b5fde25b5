"""Fetching registered models for deployment and recording where they are deployed."""

from __future__ import annotations

import logging
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from mlflow.artifacts import download_artifacts
from mlflow.exceptions import MlflowException

from registry.errors import MissingArtifact, ModelNotFound
from registry.promotion import get_version
from registry.tracking import SCHEMA_FILE, WEIGHTS_FILE, WORKFLOW_DIR, tracking

logger = logging.getLogger(__name__)


def _parse_models_uri(uri: str) -> tuple[str, str]:
    """`models:/name@alias`, `models:/name/3` or `name@alias` -> (name, version or alias)."""
    body = uri.removeprefix("models:/")
    if "@" in body:
        name, _, ref = body.partition("@")
    elif "/" in body:
        name, _, ref = body.rpartition("/")
    else:
        raise ModelNotFound(
            f"cannot read a model reference from {uri!r}; use models:/<name>@<alias> or "
            f"models:/<name>/<version>"
        )
    if not name or not ref:
        raise ModelNotFound(f"{uri!r} lacks a model name or a version/alias")
    return name, ref


def download_model(tracking_uri: str, model_uri: str, dst: Path | None = None) -> Path:
    """Download a registered model; returns a dir with `dlrm.pt`, `schema.json`, `workflow/`.

    model_uri: `models:/<name>@champion`, `models:/<name>/<version>` (or without the prefix).
    The directory is also a complete MLflow model (MLmodel, data/).
    """
    name, ref = _parse_models_uri(model_uri)
    dst = Path(dst) if dst is not None else Path(tempfile.mkdtemp(prefix="recsys-model-"))
    dst.mkdir(parents=True, exist_ok=True)
    with tracking(tracking_uri) as client:
        mv = get_version(client, name, ref)
        local = Path(
            download_artifacts(
                artifact_uri=f"models:/{name}/{mv.version}", dst_path=str(dst),
                tracking_uri=tracking_uri,
            )
        )
    for required in (WEIGHTS_FILE, SCHEMA_FILE, WORKFLOW_DIR):
        if not (local / required).exists():
            raise MissingArtifact(
                f"{name} v{mv.version} lacks {required}; it was not logged with "
                f"registry.log_training_run, re-log and register it"
            )
    logger.info("downloaded %s v%s to %s", name, mv.version, local)
    return local


def download_run_artifact(tracking_uri: str, model_name: str, version_or_alias: str, artifact: str,
                          dst: Path) -> Path:
    """Download folder or file `artifact` of the run that logged `model_name` at a version or alias
    (e.g. contracts.RECOMMENDER_DIR, the served recommender); `MissingArtifact` when the run lacks it."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    with tracking(tracking_uri) as client:
        mv = get_version(client, model_name, version_or_alias)
        try:
            local = Path(client.download_artifacts(mv.run_id, artifact, str(dst)))
        except (MlflowException, OSError) as exc:
            raise MissingArtifact(f"{model_name} v{mv.version} (run {mv.run_id}) has no artifact {artifact!r}: "
                                  f"{exc}") from exc
    logger.info("downloaded %s of %s v%s to %s", artifact, model_name, mv.version, local)
    return local


def set_deployment_tag(
    tracking_uri: str, name: str, version: str, target: str, endpoint: str
) -> None:
    """Record on the version that it now serves at `endpoint` on `target` ("local", "sagemaker")."""
    with tracking(tracking_uri) as client:
        mv = get_version(client, name, version)
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        client.set_model_version_tag(name, mv.version, f"deployment.{target}.endpoint", endpoint)
        client.set_model_version_tag(name, mv.version, f"deployment.{target}.deployed_at", now)
        client.set_model_version_tag(name, mv.version, "deployment.latest_target", target)
