"""Serving bundles built from a fitted served recommender and a real ETL run: layout, immutability, refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from serving.bundle import build_bundle
from serving.errors import BundleError
from tests.serving_world import build_served_world


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model dir as the registry hands a version over: dlrm.pt, schema.json, workflow/, recommender/."""
    return build_served_world(tmp_path_factory.mktemp("bundle")).model_dir


@pytest.fixture(scope="module")
def bundle_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bundle(model_dir, tmp_path_factory.mktemp("serving"), version=3, max_batch_size=32)


def test_bundle_holds_recommender_model_schema_workflow_repository_and_deployment(bundle_dir: Path) -> None:
    assert bundle_dir.name == "3"
    for part in ("recommender", "model.onnx", "schema.json", "workflow", "triton_repo/dlrm/config.pbtxt",
                 "triton_repo/dlrm/3/model.onnx", "deployment.json"):
        assert (bundle_dir / part).exists(), part
    schema = json.loads((bundle_dir / "schema.json").read_text())
    deployment = json.loads((bundle_dir / "deployment.json").read_text())
    assert deployment["version"] == "3" and deployment["model_name"] == "dlrm"
    assert deployment["recommender"] == "recommender"
    assert deployment["n_dense"] == len(schema["continuous"]) and deployment["n_sparse"] == len(schema["categorical"])
    assert deployment["created_at"].endswith("+00:00")
    assert not list(bundle_dir.parent.glob(".*partial"))


def test_bundle_versions_are_immutable_and_need_the_workflow(bundle_dir: Path, model_dir: Path,
                                                             tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="already exists"):
        build_bundle(model_dir, bundle_dir.parent, version=3)
    incomplete = tmp_path / "model"
    incomplete.mkdir()
    shutil.copyfile(model_dir / "dlrm.pt", incomplete / "dlrm.pt")
    shutil.copyfile(model_dir / "schema.json", incomplete / "schema.json")
    with pytest.raises(BundleError, match="workflow"):
        build_bundle(incomplete, tmp_path / "serving", version=1)
    assert not (tmp_path / "serving" / "1").exists()


def test_a_model_without_the_served_recommender_is_refused_by_name(model_dir: Path, tmp_path: Path) -> None:
    without = shutil.copytree(model_dir, tmp_path / "model", ignore=shutil.ignore_patterns("recommender"))
    with pytest.raises(BundleError, match="recommender"):
        build_bundle(without, tmp_path / "serving", version=1)
    assert not (tmp_path / "serving" / "1").exists() and not list((tmp_path / "serving").glob(".*partial"))
