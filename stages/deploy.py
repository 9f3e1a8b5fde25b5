"""The deploy run's stages: resolve a registered model, package it for Triton, deploy, smoke-test, record.

Called by `dags/deploy_model.py` and by `python -m cli deploy`. A local deploy keeps the previous
bundle and restarts it when the new one fails its smoke test (rollback); `serving_dir/current`
points at the bundle the local Triton serves, and the API reads it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from settings import Settings

log = logging.getLogger(__name__)

Stage = dict[str, Any]
TARGETS = ("local", "sagemaker")


class DeployError(RuntimeError):
    """A deploy could not complete; the message says what was rolled back."""


def resolve(version: str, settings: Settings) -> Stage:
    """Download the model behind a version number or an alias (`champion`, `challenger`)."""
    from registry import download_model, resolve_version

    number = resolve_version(settings.mlflow_tracking_uri, settings.model_name, version)
    model_dir = download_model(
        settings.mlflow_tracking_uri,
        f"models:/{settings.model_name}/{number}",
        settings.serving_dir / "downloads" / str(number),
    )
    _download_run_artifacts(settings, str(number), Path(model_dir))
    log.info("resolve: %s -> version %s at %s", version, number, model_dir)
    return {"version": str(number), "model_dir": str(model_dir)}


RUN_ARTIFACTS = ("recommender", "retrieval")  # the served recommender; the two-tower model


def _download_run_artifacts(settings: Settings, number: str, model_dir: Path) -> None:
    """Fetch the run's `recommender/` and `retrieval/` artifacts into model_dir when logged.

    A version without `recommender/` (none the nightly run registers has it missing) is refused by
    `package` (serving.bundle.build_bundle raises BundleError); `retrieval/` is optional.
    """
    from mlflow.exceptions import MlflowException

    from registry.tracking import tracking

    for name in RUN_ARTIFACTS:
        try:
            with tracking(settings.mlflow_tracking_uri) as client:
                run_id = client.get_model_version(settings.model_name, number).run_id
                if not run_id or not client.list_artifacts(run_id, name):
                    log.info("resolve: version %s has no %s artifacts; serving without them", number, name)
                    continue
                client.download_artifacts(run_id, name, str(model_dir))
        except (MlflowException, OSError) as exc:
            log.warning("resolve: could not download %s of version %s (%s); serving without it", name, number, exc)
            continue
        log.info("resolve: %s of version %s at %s", name, number, model_dir / name)


def package(resolved: Stage, settings: Settings) -> Stage:
    """Export to ONNX (parity-checked), build the Triton repository and the serving bundle."""
    from serving.bundle import build_bundle

    bundle = settings.serving_dir / resolved["version"]
    if (bundle / "deployment.json").exists():  # a retried or repeated deploy reuses the bundle
        log.info("package: bundle %s already built", bundle)
    else:
        bundle = build_bundle(
            Path(resolved["model_dir"]),
            settings.serving_dir,
            version=resolved["version"],
            model_name=settings.triton_model_name,
        )
    return {"version": resolved["version"], "bundle": str(bundle), "repo": str(bundle / "triton_repo")}


def deploy(packaged: Stage, target: str, settings: Settings) -> Stage:
    """Deploy the bundle to `target` and smoke-test it; roll back on failure."""
    if target not in TARGETS:
        raise DeployError(f"unknown deploy target {target!r}; use one of {', '.join(TARGETS)}")
    if target == "sagemaker":
        return _deploy_sagemaker(packaged, settings)
    return _deploy_local(packaged, settings)


def record(deployed: Stage, settings: Settings) -> Stage:
    """Tag the model version in MLflow with where it now runs."""
    from registry import set_deployment_tag

    set_deployment_tag(
        settings.mlflow_tracking_uri,
        settings.model_name,
        deployed["version"],
        target=deployed["target"],
        endpoint=deployed["endpoint"],
    )
    return deployed


def _deploy_local(packaged: Stage, settings: Settings) -> Stage:
    from serving.local_triton import start_server

    current = settings.serving_dir / "current"
    previous = current.resolve() if current.exists() else None
    state_dir = settings.serving_dir / "triton"
    handle = start_server(
        Path(packaged["bundle"]),
        http_port=settings.triton_http_port,
        grpc_port=settings.triton_grpc_port,
        state_dir=state_dir,
        model_name=settings.triton_model_name,
        also=_experiment_bundles(settings, Path(packaged["bundle"])),
    )
    try:
        smoke_test(Path(packaged["bundle"]), handle.http_url, settings.triton_model_name)
        smoke_test_sequential(Path(packaged["bundle"]), handle.http_url)
    except Exception as exc:
        if previous is not None and previous != Path(packaged["bundle"]).resolve():
            start_server(
                previous,
                http_port=settings.triton_http_port,
                grpc_port=settings.triton_grpc_port,
                state_dir=state_dir,
                model_name=settings.triton_model_name,
                also=_experiment_bundles(settings, previous),
            )
            raise DeployError(f"smoke test failed ({exc}); rolled back to {previous.name}") from exc
        raise DeployError(f"smoke test failed ({exc}); no previous deployment to roll back to") from exc
    _point_current(current, Path(packaged["bundle"]))
    return {"version": packaged["version"], "target": "local", "endpoint": handle.http_url}


def _experiment_bundles(settings: Settings, deployed: Path) -> list[Path]:
    """Bundles of the running experiment's arms other than `deployed`: a deploy while an experiment runs
    keeps them loaded in the restarted Triton, so its arms go on ranking. [] when none runs (or the API's
    database cannot be read: the deploy itself must not depend on it)."""
    try:
        from api.experiments import running
        from api.store import Store

        store = Store(settings.database_url)
        try:
            row = running(store)
        finally:
            store.dispose()
    except Exception as exc:  # noqa: BLE001 - a missing or unreachable API database means no experiment
        log.info("deploy: no running experiment read (%s)", exc)
        return []
    if row is None:
        return []
    versions = json.loads(row.arms).values()
    bundles = [settings.serving_dir / v for v in versions if (settings.serving_dir / v / "deployment.json").is_file()]
    return [b for b in bundles if b.resolve() != deployed.resolve()]


def _deploy_sagemaker(packaged: Stage, settings: Settings) -> Stage:
    """Every model of the bundle's repository (the ranker and, when shipped, `sequential`) on the
    multi-model endpoint, each smoke-tested; `target_models` says which TargetModel reaches which."""
    from serving.sagemaker import SageMakerConfig, deploy as sagemaker_deploy

    result = sagemaker_deploy(
        Path(packaged["repo"]), packaged["version"], SageMakerConfig.from_settings(settings)
    )
    return {"version": packaged["version"], "target": "sagemaker", "endpoint": result.endpoint_name,
            "target_models": result.target_models}


def smoke_test(bundle_dir: Path, url: str, model_name: str, rows: int = 64, model_version: str = "") -> None:
    """Score a random valid batch through Triton and compare with onnxruntime on the same file
    (`model_version`: that version of the model, when the server holds several)."""
    import onnxruntime as ort

    from serving.triton_client import TritonClient

    schema = json.loads((bundle_dir / "schema.json").read_text())
    columns = {c["name"]: c for c in schema["columns"]}
    rng = np.random.default_rng(0)
    dense = rng.normal(size=(rows, len(schema["continuous"]))).astype(np.float32)
    sparse = np.stack(
        [rng.integers(0, columns[name]["cardinality"], rows) for name in schema["categorical"]], axis=1
    ).astype(np.int64)
    served = TritonClient(url, model_name, model_version=model_version).score(dense, sparse)
    session = ort.InferenceSession(str(bundle_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"dense": dense, "sparse": sparse})[0].reshape(-1)
    if not np.allclose(served, expected, atol=1e-5):
        worst = float(np.max(np.abs(served - expected)))
        raise DeployError(f"Triton scores differ from the exported model by up to {worst:.2e}")
    log.info("smoke test: %d rows scored by Triton at %s match onnxruntime", rows, url)


def smoke_test_sequential(bundle_dir: Path, url: str, rows: int = 8, length: int = 5) -> None:
    """When the bundle ships the sequential model: random sequences scored by Triton (that bundle's
    version) against onnxruntime on the same file; nothing to do for a bundle without one."""
    import onnxruntime as ort

    from serving.sequential_export import PARITY_TOLERANCE
    from serving.triton_client import TritonClient, TritonSequentialScorer
    from serving.triton_repo import read_sequential

    model = read_sequential(bundle_dir / "triton_repo")
    if model is None:
        return
    session = ort.InferenceSession(str(model.onnx_path), providers=["CPUExecutionProvider"])
    n_items = session.get_outputs()[0].shape[1]
    rng = np.random.default_rng(0)
    items = rng.integers(0, n_items + 1, size=(rows, length)).astype(np.int64)
    kinds = np.where(items > 0, rng.integers(1, 5, size=(rows, length)), 0).astype(np.int64)
    client = TritonClient(url, model.name, model_version=str(model.version))
    try:
        served = TritonSequentialScorer(client, n_items, length).score_sequences(items, kinds)
    finally:
        client.close()
    expected = session.run(["scores"], {"items": items, "kinds": kinds})[0]
    worst = float(np.max(np.abs(served - expected)))
    if served.shape != expected.shape or not worst < PARITY_TOLERANCE:
        raise DeployError(f"Triton's sequential scores differ from the exported model by up to {worst:.2e}")
    log.info("smoke test: %d sequences scored by Triton's %s v%d match onnxruntime", rows, model.name, model.version)


def _point_current(link: Path, target: Path) -> None:
    """Swap the `current` symlink atomically so the API never sees a missing bundle."""
    tmp = link.with_name(link.name + ".tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(target.resolve(), target_is_directory=True)
    os.replace(tmp, link)
