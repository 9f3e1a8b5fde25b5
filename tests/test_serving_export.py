"""ONNX/TorchScript export of the DLRM: parity with PyTorch, schema checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from serving.errors import ExportError, ExportParityError, SchemaError
from serving.export import ScoringHead, export_onnx, export_torchscript, onnx_parity, random_batch
from models.dlrm import DLRM, DLRMConfig
from models.saved import load_model, save_model


def write_model_dir(root: Path, n_dense: int = 3, cardinalities: tuple[int, ...] = (11, 7, 5), seed: int = 0) -> Path:
    torch.manual_seed(seed)
    root.mkdir(parents=True, exist_ok=True)
    save_model(DLRM(DLRMConfig(n_dense=n_dense, cardinalities=list(cardinalities), embedding_dim=8,
                               bottom_mlp=[16], top_mlp=[16])), root / "dlrm.pt")
    schema = {"continuous": [f"d{i}" for i in range(n_dense)],
              "categorical": [f"c{i}" for i in range(len(cardinalities))], "target": "label"}
    (root / "schema.json").write_text(json.dumps(schema))
    return root


def test_onnx_scores_equal_sigmoid_of_torch_logits_for_any_batch_size(tmp_path: Path) -> None:
    model_dir = write_model_dir(tmp_path / "model")
    onnx_path = export_onnx(model_dir / "dlrm.pt", model_dir / "schema.json", tmp_path / "out" / "model.onnx")
    model = load_model(model_dir / "dlrm.pt")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["dense", "sparse"]
    assert [o.name for o in session.get_outputs()] == ["score"]
    for batch_size in (1, 37):  # the batch axis is dynamic
        dense, sparse = random_batch(model, batch_size, seed=batch_size)
        (score,) = session.run(["score"], {"dense": dense.numpy(), "sparse": sparse.numpy()})
        with torch.no_grad():
            expected = torch.sigmoid(model(dense, sparse)).numpy()
        assert score.shape == (batch_size, 1)
        np.testing.assert_allclose(score[:, 0], expected, atol=1e-5)
        assert ((score > 0) & (score < 1)).all()


def test_export_refuses_schema_with_other_feature_counts(tmp_path: Path) -> None:
    model_dir = write_model_dir(tmp_path / "model")
    (model_dir / "schema.json").write_text(json.dumps({"continuous": ["d0"], "categorical": ["c0", "c1", "c2"]}))
    with pytest.raises(ExportError, match="n_dense=3"):
        export_onnx(model_dir / "dlrm.pt", model_dir / "schema.json", tmp_path / "model.onnx")


def test_export_reports_missing_schema(tmp_path: Path) -> None:
    model_dir = write_model_dir(tmp_path / "model")
    with pytest.raises(SchemaError, match="does not exist"):
        export_onnx(model_dir / "dlrm.pt", tmp_path / "nope.json", tmp_path / "model.onnx")


def test_parity_check_rejects_a_graph_of_another_model(tmp_path: Path) -> None:
    first = write_model_dir(tmp_path / "a", seed=0)
    second = write_model_dir(tmp_path / "b", seed=1)
    onnx_path = export_onnx(first / "dlrm.pt", first / "schema.json", tmp_path / "a.onnx")
    with pytest.raises(ExportParityError, match="differ from PyTorch"):
        onnx_parity(load_model(second / "dlrm.pt"), onnx_path)


def test_torchscript_export_matches_onnx(tmp_path: Path) -> None:
    model_dir = write_model_dir(tmp_path / "model")
    onnx_path = export_onnx(model_dir / "dlrm.pt", model_dir / "schema.json", tmp_path / "model.onnx")
    scripted = torch.jit.load(str(export_torchscript(model_dir / "dlrm.pt", tmp_path / "model.ts")))
    model = load_model(model_dir / "dlrm.pt")
    dense, sparse = random_batch(model, 9, seed=3)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (score,) = session.run(["score"], {"dense": dense.numpy(), "sparse": sparse.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(scripted(dense, sparse).numpy(), score, atol=1e-5)
        np.testing.assert_allclose(ScoringHead(model)(dense, sparse).numpy(), score, atol=1e-5)
