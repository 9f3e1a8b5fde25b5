"""Triton model repository layout and config text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from serving.errors import RepositoryError
from serving.export import export_onnx
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from serving.triton_repo import QUEUE_DELAY_US, build_repository, read_repository
from models.dlrm import DLRM, DLRMConfig, save_model


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("repo_model")
    torch.manual_seed(0)
    save_model(DLRM(DLRMConfig(n_dense=5, cardinalities=[9, 4], embedding_dim=4, bottom_mlp=[8], top_mlp=[8])),
               root / "dlrm.pt")
    (root / "schema.json").write_text(json.dumps({"continuous": [f"d{i}" for i in range(5)], "categorical": ["u", "p"]}))
    return export_onnx(root / "dlrm.pt", root / "schema.json", root / "model.onnx"), root / "schema.json"


def test_repository_has_config_and_versioned_model(tmp_path: Path, exported: tuple[Path, Path]) -> None:
    onnx_path, schema_path = exported
    model_dir = build_repository(onnx_path, schema_path, tmp_path / "repo", max_batch_size=128,
                                 preferred_batch_sizes=(16, 64), max_queue_delay_us=250)
    assert model_dir == tmp_path / "repo" / "dlrm"
    assert (model_dir / "1" / "model.onnx").read_bytes() == onnx_path.read_bytes()
    text = (model_dir / "config.pbtxt").read_text()
    assert 'name: "dlrm"' in text
    assert 'platform: "onnxruntime_onnx"' in text
    assert "max_batch_size: 128" in text
    # Triton prepends the batch axis, so dense is [-1, 5], sparse [-1, 2], score [-1, 1].
    dense_block = text.split('name: "dense"')[1].split("}")[0]
    sparse_block = text.split('name: "sparse"')[1].split("}")[0]
    score_block = text.split('name: "score"')[1].split("}")[0]
    assert "TYPE_FP32" in dense_block and "dims: 5" in dense_block
    assert "TYPE_INT64" in sparse_block and "dims: 2" in sparse_block
    assert "TYPE_FP32" in score_block and "dims: 1" in score_block
    assert "dynamic_batching" in text and "max_queue_delay_microseconds: 250" in text
    assert "preferred_batch_size: 16" in text and "preferred_batch_size: 64" in text
    assert "kind: KIND_CPU" in text


def test_the_batcher_waits_for_more_requests_only_on_a_gpu(tmp_path: Path, exported: tuple[Path, Path]) -> None:
    onnx_path, schema_path = exported
    for kind, delay in (("KIND_CPU", 0), ("KIND_GPU", 500)):
        build_repository(onnx_path, schema_path, tmp_path / kind, instance_kind=kind)  # type: ignore[arg-type]
        config = text_format.Parse((tmp_path / kind / "dlrm" / "config.pbtxt").read_text(), pb.ModelConfig())
        assert config.HasField("dynamic_batching")  # queued requests are still batched together on CPU
        assert config.dynamic_batching.max_queue_delay_microseconds == delay == QUEUE_DELAY_US[kind]


def test_adding_a_version_keeps_the_old_one_and_serves_the_newest(tmp_path: Path, exported: tuple[Path, Path]) -> None:
    onnx_path, schema_path = exported
    build_repository(onnx_path, schema_path, tmp_path / "repo", version=1)
    build_repository(onnx_path, schema_path, tmp_path / "repo", version=2, instance_kind="KIND_GPU")
    assert sorted(p.name for p in (tmp_path / "repo" / "dlrm").iterdir()) == ["1", "2", "config.pbtxt"]
    model = read_repository(tmp_path / "repo")
    assert (model.name, model.version, model.n_dense, model.n_sparse) == ("dlrm", 2, 5, 2)
    assert model.onnx_path == tmp_path / "repo" / "dlrm" / "2" / "model.onnx"
    assert "kind: KIND_GPU" in (tmp_path / "repo" / "dlrm" / "config.pbtxt").read_text()


def test_preferred_batch_sizes_above_the_maximum_are_dropped(tmp_path: Path, exported: tuple[Path, Path]) -> None:
    onnx_path, schema_path = exported
    build_repository(onnx_path, schema_path, tmp_path / "repo", max_batch_size=100, preferred_batch_sizes=(64, 256))
    assert read_repository(tmp_path / "repo").preferred_batch_sizes == (64,)


def test_bad_inputs_raise_repository_errors(tmp_path: Path, exported: tuple[Path, Path]) -> None:
    onnx_path, schema_path = exported
    with pytest.raises(RepositoryError, match="does not exist"):
        build_repository(tmp_path / "missing.onnx", schema_path, tmp_path / "repo")
    with pytest.raises(RepositoryError, match="positive"):
        build_repository(onnx_path, schema_path, tmp_path / "repo", version=0)
    with pytest.raises(RepositoryError, match="name the one"):
        read_repository(tmp_path / "empty")


def test_cli_exports_and_builds_a_repository(tmp_path: Path, exported: tuple[Path, Path]) -> None:
    from serving.__main__ import main

    _, schema_path = exported
    model_path = schema_path.parent / "dlrm.pt"
    assert main(["export", str(model_path), str(schema_path), str(tmp_path / "m.onnx"),
                 "--torchscript", str(tmp_path / "m.ts")]) == 0
    assert main(["repo", str(tmp_path / "m.onnx"), str(schema_path), str(tmp_path / "repo"), "--version", "4"]) == 0
    assert read_repository(tmp_path / "repo").version == 4 and (tmp_path / "m.ts").is_file()
    assert main(["stop", "--state-dir", str(tmp_path / "state")]) == 0  # nothing running: a no-op
    assert main(["repo", str(tmp_path / "absent.onnx"), str(schema_path), str(tmp_path / "repo")]) == 1
