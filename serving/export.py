"""Exports a trained DLRM to ONNX (probability output) and checks it against PyTorch."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from models.dlrm import DLRM
from models.saved import load_model
from serving.errors import ExportError, ExportParityError
from serving.schema import FeatureSchema, read_schema

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-5
OPSET = 17


class ScoringHead(nn.Module):
    """DLRM plus sigmoid: dense (B, n_dense) float32, sparse (B, n_sparse) int64 -> score (B, 1)."""

    def __init__(self, model: DLRM) -> None:
        super().__init__()
        self.model = model

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(dense, sparse)).unsqueeze(-1)


@dataclass(frozen=True)
class ParityReport:
    """Largest absolute difference between ONNX Runtime and PyTorch scores on a random batch."""

    max_abs_diff: float
    batch_size: int


def random_batch(model: DLRM, batch_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs covering every embedding table's full index range, for parity checks."""
    generator = torch.Generator().manual_seed(seed)
    dense = torch.randn(batch_size, model.config.n_dense, generator=generator)
    columns = [torch.randint(0, c, (batch_size,), generator=generator) for c in model.config.cardinalities]
    return dense, torch.stack(columns, dim=1)


def check_schema_matches(model: DLRM, schema: FeatureSchema) -> None:
    """The model's input widths must equal the schema's, or serving would feed the wrong columns."""
    n_sparse = len(model.config.cardinalities)
    if (model.config.n_dense, n_sparse) != (schema.n_dense, schema.n_sparse):
        raise ExportError(
            f"model expects n_dense={model.config.n_dense}, n_sparse={n_sparse} but schema.json lists "
            f"{schema.n_dense} continuous and {schema.n_sparse} categorical columns; export the model "
            "with the schema of the ETL run it was trained on"
        )


def onnx_parity(model: DLRM, onnx_path: Path, batch_size: int = 64) -> ParityReport:
    """Score one random batch with PyTorch and ONNX Runtime; raise `ExportParityError` past 1e-5."""
    dense, sparse = random_batch(model, batch_size)
    with torch.no_grad():
        expected = ScoringHead(model).eval()(dense, sparse).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (got,) = session.run(["score"], {"dense": dense.numpy(), "sparse": sparse.numpy()})
    if got.shape != expected.shape:
        raise ExportParityError(f"ONNX output shape {got.shape} != PyTorch {expected.shape} for {onnx_path}")
    diff = float(np.max(np.abs(got - expected)))
    if not diff < PARITY_TOLERANCE:
        raise ExportParityError(
            f"ONNX scores differ from PyTorch by up to {diff:.3g} (tolerance {PARITY_TOLERANCE}) for {onnx_path}"
        )
    return ParityReport(max_abs_diff=diff, batch_size=batch_size)


def _export_model(model: DLRM, out_path: Path) -> None:
    dense, sparse = random_batch(model, 4)
    batch_axis = {0: "batch"}
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of the dynamo one, which needs
        # onnxscript; this graph has no control flow, so the legacy path exports it exactly.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            ScoringHead(model).eval(),
            (dense, sparse),
            str(out_path),
            input_names=["dense", "sparse"],
            output_names=["score"],
            dynamic_axes={"dense": batch_axis, "sparse": batch_axis, "score": batch_axis},
            opset_version=OPSET,
            dynamo=False,
        )


def export_onnx(model_path: Path, schema_path: Path, out_path: Path) -> Path:
    """Write `out_path` (ONNX: dense, sparse -> score (B, 1)), checked against PyTorch; returns it."""
    model = load_model(Path(model_path))
    check_schema_matches(model, read_schema(schema_path))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        _export_model(model, out_path)
    except Exception as exc:  # the exporter raises many unrelated types; one actionable error instead
        raise ExportError(f"torch.onnx.export failed for {model_path}: {exc}") from exc
    report = onnx_parity(model, out_path)
    log.info("exported %s -> %s (max |onnx - torch| = %.2e)", model_path, out_path, report.max_abs_diff)
    return out_path


def export_torchscript(model_path: Path, out_path: Path) -> Path:
    """Write a traced TorchScript module with the same inputs and `score` output as the ONNX graph."""
    model = load_model(Path(model_path))
    dense, sparse = random_batch(model, 4)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        traced = torch.jit.trace(ScoringHead(model).eval(), (dense, sparse))
    traced.save(str(out_path))
    return out_path
