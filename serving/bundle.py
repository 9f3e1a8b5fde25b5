"""Serving bundles: `<serving_dir>/<version>/` with the served recommender, the ONNX ranker, its Triton repo.

A bundle is everything the request path needs: `recommender/` (candidate sources, filters and the
features of each (customer, candidate) pair, `serving.recommender`), the DLRM that ranks the pairs as
an ONNX model in a Triton repository, and deployment.json. The ETL's fitted workflow and its schema
travel with it (`workflow/`, `schema.json`): the registered run's lineage.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from contracts import RECOMMENDER_DIR, SCHEMA_FILE, WORKFLOW_DIR
from serving.errors import BundleError
from serving.recommender import RECOMMENDER_FILE
from serving.schema import FeatureSchema, read_schema

log = logging.getLogger(__name__)

# `dlrm.pt` is what the registry logs; `model.pt` what training writes.
WEIGHT_FILE_NAMES = ("dlrm.pt", "model.pt")
ONNX_FILE = "model.onnx"
REPO_DIR = "triton_repo"
DEPLOYMENT_FILE = "deployment.json"
RETRIEVAL_DIR = "retrieval"  # optional two-tower candidate model: two_tower.pt + catalogue.parquet
RETRIEVAL_MODEL_FILE = "two_tower.pt"


@dataclass(frozen=True)
class Deployment:
    """deployment.json: what a bundle serves and when it was built."""

    version: str
    created_at: str  # ISO 8601, UTC
    model_name: str  # Triton model name
    triton_version: int  # version directory inside triton_repo/<model_name>/
    n_dense: int
    n_sparse: int
    continuous: list[str]
    categorical: list[str]
    source: str  # the model directory the bundle was built from
    retrieval: str | None = None  # bundle-relative dir of the two-tower candidate model, if shipped
    recommender: str | None = None  # bundle-relative dir of the served recommender (every bundle built now)
    # Triton model of the recommender's sequential source (same version as the ranker), if shipped
    sequential_model: str | None = None


def find_weights(model_dir: Path) -> Path:
    """The DLRM weights file of a model directory (`dlrm.pt`, `model.pt` or the only `*.pt`)."""
    for name in WEIGHT_FILE_NAMES:
        if (model_dir / name).is_file():
            return model_dir / name
    candidates = sorted(model_dir.glob("*.pt"))
    if len(candidates) == 1:
        return candidates[0]
    raise BundleError(
        f"{model_dir} holds {[p.name for p in candidates] or 'no *.pt files'}; expected one of "
        f"{WEIGHT_FILE_NAMES} written by models.saved.save_model"
    )


def _copy_retrieval(model_dir: Path, staging: Path) -> str | None:
    """Copy model_dir/retrieval/ into the bundle when it holds a two-tower model; its bundle path or None."""
    source = model_dir / RETRIEVAL_DIR
    if not (source / RETRIEVAL_MODEL_FILE).is_file():
        if source.exists():
            log.warning("%s has no %s; the bundle ships without a retrieval model", source, RETRIEVAL_MODEL_FILE)
        return None
    shutil.copytree(source, staging / RETRIEVAL_DIR)
    return RETRIEVAL_DIR


def _copy_recommender(model_dir: Path, staging: Path) -> str:
    """Copy model_dir/recommender/ (the served recommender the ranker ranks for) into the bundle."""
    source = model_dir / RECOMMENDER_DIR
    if not (source / RECOMMENDER_FILE).is_file():
        raise BundleError(f"{source} has no {RECOMMENDER_FILE}: a bundle serves the recommender the nightly run "
                          f"registers with the ranker (its {RECOMMENDER_DIR}/ artifact); none was found")
    shutil.copytree(source, staging / RECOMMENDER_DIR)
    return RECOMMENDER_DIR


def build_bundle(
    model_dir: Path,
    out_dir: Path,
    version: str | int,
    model_name: str = "dlrm",
    triton_version: int | None = None,
    **repository_options: Any,
) -> Path:
    """Build `out_dir/<version>/` from a model dir (weights, schema.json, workflow/, recommender/); returns it.

    A model dir without `recommender/` is refused (BundleError). An optional `model_dir/retrieval/`
    (two_tower.pt, catalogue.parquet) is copied as `retrieval/` and named in deployment.json; the
    request path does not read it (the served recommender's sources are its candidates). A served
    recommender (`model_dir/recommender/`) that keeps the sequential source adds the Triton model
    `sequential` beside the ranker, at the ranker's version.

    The Triton model version is `triton_version`, else `version` when it is a positive integer
    (a registry version), else 1.
    `repository_options` go to `serving.triton_repo.build_repository` (max_batch_size, ...).
    """
    from serving.export import export_onnx
    from serving.sequential_export import SEQUENTIAL_ONNX
    from serving.triton_repo import SEQUENTIAL_MODEL, build_repository, build_sequential_repository

    model_dir = Path(model_dir)
    schema_path = model_dir / SCHEMA_FILE
    workflow_dir = model_dir / WORKFLOW_DIR
    missing = [p.name for p in (schema_path, workflow_dir) if not p.exists()]
    if missing:
        raise BundleError(f"{model_dir} lacks {missing}; download the registered model with its artifacts")
    weights = find_weights(model_dir)
    if triton_version is None:
        triton_version = int(version) if str(version).isdigit() and int(version) > 0 else 1
    schema = read_schema(schema_path)
    bundle_dir = Path(out_dir) / str(version)
    if bundle_dir.exists():
        raise BundleError(f"bundle {bundle_dir} already exists; bundles are immutable, use a new version")
    staging = bundle_dir.with_name(f".{bundle_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        onnx_path = export_onnx(weights, schema_path, staging / ONNX_FILE)
        shutil.copyfile(schema_path, staging / SCHEMA_FILE)
        shutil.copytree(workflow_dir, staging / WORKFLOW_DIR)
        retrieval = _copy_retrieval(model_dir, staging)
        recommender = _copy_recommender(model_dir, staging)
        build_repository(onnx_path, schema_path, staging / REPO_DIR, model_name=model_name,
                         version=triton_version, **repository_options)
        sequential_onnx = staging / RECOMMENDER_DIR / SEQUENTIAL_ONNX
        sequential = SEQUENTIAL_MODEL if recommender is not None and sequential_onnx.is_file() else None
        if sequential is not None:  # the recommender keeps the sequential source: Triton serves it too
            build_sequential_repository(sequential_onnx, staging / REPO_DIR, version=triton_version,
                                        instance_kind=repository_options.get("instance_kind", "KIND_CPU"))
        deployment = Deployment(
            version=str(version),
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            model_name=model_name,
            triton_version=triton_version,
            n_dense=schema.n_dense,
            n_sparse=schema.n_sparse,
            continuous=list(schema.continuous),
            categorical=list(schema.categorical),
            source=str(model_dir),
            retrieval=retrieval,
            recommender=recommender,
            sequential_model=sequential,
        )
        (staging / DEPLOYMENT_FILE).write_text(json.dumps(asdict(deployment), indent=2))
        # A rename, so a reader never sees a half-written bundle.
        staging.rename(bundle_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("serving bundle %s built from %s", bundle_dir, model_dir)
    return bundle_dir


class ServingBundle:
    """A built bundle: where it is, what it serves (deployment.json) and its ranker's input schema."""

    def __init__(self, path: Path, deployment: Deployment, schema: FeatureSchema) -> None:
        self.path = path
        self.deployment = deployment
        self.schema = schema

    @classmethod
    def load(cls, path: Path) -> "ServingBundle":
        path = Path(path)
        deployment_path = path / DEPLOYMENT_FILE
        if not deployment_path.is_file():
            raise BundleError(f"{path} is not a serving bundle (no {DEPLOYMENT_FILE}); build it with build_bundle")
        deployment = Deployment(**json.loads(deployment_path.read_text()))
        return cls(path, deployment, read_schema(path / SCHEMA_FILE))

    @property
    def repository(self) -> Path:
        return self.path / REPO_DIR
