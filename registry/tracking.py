"""Log one training run to MLflow: params, per-epoch metrics, eval metrics, plots, lineage, model.

The model is logged with the MLflow pytorch flavour and, next to it inside the same logged
model, the files deployment needs (`dlrm.pt` from `models.saved.save_model`, `schema.json`,
`workflow/`), so `models:/<name>@champion` alone is enough to build a serving bundle.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.tracking._model_registry import utils as _registry_utils
from mlflow.tracking._tracking_service import utils as _tracking_utils
from mlflow.types import Schema, TensorSpec

from contracts import SCHEMA_FILE, WORKFLOW_DIR
from registry import plots
from registry.errors import MissingArtifact
from registry.lineage import Lineage

logger = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"  # name of the logged model inside the run
WEIGHTS_FILE = "dlrm.pt"
TAG_MODEL_URI = "recsys.model_uri"
# Accepted keys of the `artifacts` argument for the two files the logged model must carry.
SCHEMA_KEYS = ("schema", "schema.json")
WORKFLOW_KEYS = ("workflow",)
# Lineage passed as plain tags (e.g. {"git_sha": ...}) is stored under the `lineage.` prefix.
_LINEAGE_TAG_NAMES = ("git_sha", "data_hash", "eval_set_hash", "run_date", "input_paths")
_MAX_PARAM_CHARS = 6000  # MLflow rejects longer param values
_URI_ENV_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@contextlib.contextmanager
def tracking(tracking_uri: str) -> Iterator[MlflowClient]:
    """Point MLflow's fluent API (tracking and registry) at `tracking_uri` for the block.

    MLflow keeps the URIs in module globals and mirrors them into MLFLOW_TRACKING_URI /
    MLFLOW_REGISTRY_URI, which `settings` and subprocesses read; both are put back afterwards so
    a call never leaks its store into the rest of the process. Not thread-safe (MLflow isn't).
    """
    saved_env = {name: os.environ.get(name) for name in _URI_ENV_VARS}
    saved_tracking, saved_registry = _tracking_utils._tracking_uri, _registry_utils._registry_uri
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        yield MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    finally:
        _tracking_utils.set_tracking_uri(saved_tracking)
        _registry_utils._registry_uri = saved_registry
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _experiment_id(client: MlflowClient, name: str, artifact_root: str | None) -> str:
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    location = f"{artifact_root.rstrip('/')}/{name}" if artifact_root else None
    return client.create_experiment(name, artifact_location=location)


def _required(artifacts: dict[str, Path], keys: tuple[str, ...]) -> Path:
    for key in keys:
        if key in artifacts:
            return artifacts[key]
    raise MissingArtifact(
        f"artifacts lacks '{keys[0]}'; pass artifacts={{'schema': <etl out>/schema.json, "
        f"'workflow': <etl out>/workflow, ...}} so the logged model can be deployed"
    )


def _check_artifacts(artifacts: dict[str, Path]) -> tuple[Path, Path]:
    """The schema file and workflow dir, after checking every artifact exists."""
    schema, workflow = _required(artifacts, SCHEMA_KEYS), _required(artifacts, WORKFLOW_KEYS)
    for key, path in artifacts.items():
        if not Path(path).exists():
            raise MissingArtifact(f"artifact '{key}' points at {path}, which does not exist")
    return schema, workflow


def _numeric(values: dict) -> dict[str, float]:
    """Only real numbers become metrics; counts and floats alike, None/strings/bools skipped."""
    return {
        k: float(v)
        for k, v in values.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def _run_tags(lineage: Lineage | None, tags: dict[str, str] | None) -> dict[str, str]:
    merged = dict(lineage.as_tags()) if lineage is not None else {}
    for key, value in (tags or {}).items():
        name = f"lineage.{key}" if key in _LINEAGE_TAG_NAMES else key
        merged[name] = str(value)
    return merged


def model_signature(n_dense: int, n_sparse: int) -> ModelSignature:
    """Two named tensor inputs, as Triton serves them; output is one logit per row."""
    inputs = Schema(
        [
            TensorSpec(np.dtype(np.float32), (-1, n_dense), "dense"),
            TensorSpec(np.dtype(np.int64), (-1, n_sparse), "sparse"),
        ]
    )
    outputs = Schema([TensorSpec(np.dtype(np.float32), (-1,), "logit")])
    return ModelSignature(inputs=inputs, outputs=outputs)


def _input_example(n_dense: int, n_sparse: int) -> tuple[np.ndarray, np.ndarray]:
    """(dense, sparse) for a batch of 2: the pt2 exporter traces with it, and a batch of 1
    would freeze the batch dimension. Index 0 is valid in every table (missing/OOV)."""
    return np.zeros((2, n_dense), dtype=np.float32), np.zeros((2, n_sparse), dtype=np.int64)


def _pip_requirements() -> list[str]:
    import torch

    return [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"]


def _deploy_bundle(model_path: Path, schema: Path, workflow: Path, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    shutil.copy2(model_path, into / WEIGHTS_FILE)
    shutil.copy2(schema, into / SCHEMA_FILE)
    shutil.copytree(workflow, into / WORKFLOW_DIR)
    return into


def _log_artifacts(artifacts: dict[str, Path]) -> None:
    """A directory goes under its key; a file under its key, or at it when the key ends with
    the file's name (`"validation/report.json"` -> `validation/report.json`)."""
    for key, path in artifacts.items():
        key = key.strip("/")
        if path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path=key)
        elif key == path.name or key.endswith("/" + path.name):
            parent = key[: -len(path.name)].strip("/")
            mlflow.log_artifact(str(path), artifact_path=parent or None)
        else:
            mlflow.log_artifact(str(path), artifact_path=key)


def _log_plots(history: list[dict], eval_metrics: dict[str, float], tmp: Path) -> None:
    for figure in (
        plots.learning_curves(history, tmp / "learning_curves.png"),
        plots.model_vs_baseline(eval_metrics, tmp / "model_vs_baseline.png"),
    ):
        if figure is not None:
            mlflow.log_artifact(str(figure), artifact_path="plots")


def log_training_run(
    tracking_uri: str,
    experiment: str,
    params: dict,
    history: list[dict],
    eval_metrics: dict[str, float],
    model_path: Path,
    artifacts: dict[str, Path],
    lineage: Lineage | None = None,
    artifact_root: str | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """Log a finished training run and its model; returns the MLflow run id.

    history: one dict per epoch (key `epoch` is the step; other numeric keys become metrics).
    eval_metrics: test-set metrics, e.g. `ndcg_at_10` and `baseline_ndcg_at_10`.
    artifacts: must hold `schema` (or `schema.json`) and `workflow` (dir); every entry is
    also logged to the run (see `_log_artifacts` for where), e.g. `validation/report.json`.
    lineage: git sha, data hash, eval-set hash, run date, inputs as `lineage.*` tags. The same
    can come as plain `tags` (`git_sha`, `data_hash`, `eval_set_hash`, `run_date`,
    `input_paths`), which are stored under the `lineage.` prefix too. Without an eval-set hash
    the promotion gate cannot compare logged metrics and needs `versus_champion` evidence.
    artifact_root: where a new experiment stores artifacts (None: the server's default).
    """
    from models.saved import load_model  # imports torch; keep registry import light

    model_path = Path(model_path)
    if not model_path.is_file():
        raise MissingArtifact(f"model file {model_path} does not exist; train first")
    artifacts = {key: Path(value) for key, value in artifacts.items()}
    schema, workflow = _check_artifacts(artifacts)
    model = load_model(model_path)
    n_dense, cardinalities = model.config.n_dense, list(model.config.cardinalities)

    with tracking(tracking_uri) as client, tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        experiment_id = _experiment_id(client, experiment, artifact_root)
        with mlflow.start_run(experiment_id=experiment_id) as run:
            mlflow.set_tags(_run_tags(lineage, tags))
            mlflow.log_params({k: str(v)[:_MAX_PARAM_CHARS] for k, v in params.items()})
            for i, row in enumerate(history):
                step = int(row.get("epoch", i))
                epoch_metrics = {k: v for k, v in row.items() if k != "epoch"}
                mlflow.log_metrics(_numeric(epoch_metrics), step=step)
            mlflow.log_metrics(_numeric(eval_metrics))
            _log_artifacts(artifacts)
            _log_plots(history, _numeric(eval_metrics), tmp)

            info = mlflow.pytorch.log_model(
                model,
                name=MODEL_ARTIFACT,
                signature=model_signature(n_dense, len(cardinalities)),
                input_example=_input_example(n_dense, len(cardinalities)),
                # Stated, not inferred: inference re-imports the model in a subprocess and
                # costs seconds per run for a list that is always this one.
                pip_requirements=_pip_requirements(),
            )
            bundle = _deploy_bundle(model_path, schema, workflow, tmp / "bundle")
            client.log_model_artifacts(info.model_id, str(bundle))
            mlflow.set_tag(TAG_MODEL_URI, info.model_uri)
            logger.info(
                "logged run %s in experiment %s (model %s)", run.info.run_id, experiment,
                info.model_uri,
            )
            return run.info.run_id


def log_rejected_data(
    tracking_uri: str,
    experiment: str,
    reason: str,
    report_path: Path,
    data_docs: Path | None,
    artifact_root: str | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """Record a run that validation stopped: status FAILED, the reason, the report and Data Docs.

    Data scientists see in the MLflow UI why a night produced no model, next to the runs that did.
    """
    with tracking(tracking_uri) as client:
        experiment_id = _experiment_id(client, experiment, artifact_root)
        with mlflow.start_run(experiment_id=experiment_id, run_name="validation-failed") as run:
            mlflow.set_tags({"stage": "validate", "validation.reason": reason[:5000], **(tags or {})})
            report = json.loads(Path(report_path).read_text())
            mlflow.log_metrics(
                {k: float(report[k]) for k in ("n_in", "n_passed", "n_quarantined") if k in report}
            )
            mlflow.log_artifact(str(report_path), artifact_path="validation")
            if data_docs is not None and Path(data_docs).is_dir():
                mlflow.log_artifacts(str(data_docs), artifact_path="validation/data_docs")
            mlflow.end_run(status="FAILED")
        return run.info.run_id
