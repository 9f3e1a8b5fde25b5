"""The sequential source as ONNX: export with a parity check against PyTorch, and an ONNX Runtime scorer.

`export_sequential` writes `sequential.onnx` (items, kinds (B, L) int64 -> scores (B, n_items)
float32, batch and length dynamic) and fails when ONNX Runtime and PyTorch differ by more than
`PARITY_TOLERANCE` on random sequences (padding included). `OnnxSequentialScorer` serves it
in-process in the API worker (one session per worker, loaded once, one thread): the recommender's
`score_sequences` call, without torch on the request path.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from models.sequential import NextItemHead, SequentialScorer, history_tokens
from serving.errors import ExportError, ExportParityError
from serving.export import OPSET, ParityReport

log = logging.getLogger(__name__)

SEQUENTIAL_ONNX = "sequential.onnx"
PARITY_TOLERANCE = 1e-4  # scores are logits (not probabilities): a relative scale of ~1e-6


def random_sequences(scorer: SequentialScorer, batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded sequences of random lengths over the whole token range."""
    rng = np.random.default_rng(seed)
    length = scorer.max_len
    items = rng.integers(1, scorer.n_items + 1, size=(batch, length))
    kinds = rng.integers(1, 5, size=(batch, length))
    pad = np.arange(length)[None, :] < rng.integers(0, length, size=(batch, 1))
    return np.where(pad, 0, items).astype(np.int64), np.where(pad, 0, kinds).astype(np.int64)


def export_sequential(scorer: SequentialScorer, out_path: Path, batch: int = 16) -> ParityReport:
    """Write the scorer's model to `out_path` as ONNX and check it against PyTorch; returns the parity."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    items, kinds = random_sequences(scorer, 4)
    axes = {0: "batch", 1: "length"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(NextItemHead(scorer.model).eval(), (torch.from_numpy(items), torch.from_numpy(kinds)),
                              str(out_path), input_names=["items", "kinds"], output_names=["scores"],
                              dynamic_axes={"items": axes, "kinds": axes, "scores": {0: "batch"}},
                              opset_version=OPSET, dynamo=False)
    except Exception as exc:  # the exporter raises many unrelated types; one actionable error instead
        raise ExportError(f"torch.onnx.export of the sequential model failed: {exc}") from exc
    items, kinds = random_sequences(scorer, batch, seed=1)
    expected = scorer.score_sequences(items, kinds)
    got = OnnxSequentialScorer(out_path, scorer.n_items, scorer.max_len).score_sequences(items, kinds)
    diff = float(np.max(np.abs(got - expected)))
    if got.shape != expected.shape or not diff < PARITY_TOLERANCE:
        raise ExportParityError(f"sequential ONNX differs from PyTorch by {diff:.3g} (shape {got.shape} vs "
                                f"{expected.shape}; tolerance {PARITY_TOLERANCE}) for {out_path}")
    log.info("exported the sequential model -> %s (max |onnx - torch| = %.2e)", out_path, diff)
    return ParityReport(max_abs_diff=diff, batch_size=batch)


class OnnxSequentialScorer:
    """`score_sequences` (and the unordered `score` fallback) of an exported sequential model."""

    name = "sequential"

    def __init__(self, path: Path, n_items: int, max_len: int) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.n_items, self.max_len = n_items, max_len

    @classmethod
    def replacing(cls, scorer: SequentialScorer, path: Path) -> "OnnxSequentialScorer":
        return cls(path, scorer.n_items, scorer.max_len)

    def score_sequences(self, items: np.ndarray, kinds: np.ndarray) -> np.ndarray:
        items = np.ascontiguousarray(np.asarray(items, dtype=np.int64)[:, -self.max_len:])
        kinds = np.ascontiguousarray(np.asarray(kinds, dtype=np.int64)[:, -self.max_len:])
        (scores,) = self.session.run(["scores"], {"items": items, "kinds": kinds})
        return np.asarray(scores, dtype=np.float32)

    def score(self, history) -> np.ndarray:  # type: ignore[no-untyped-def]
        rows = history.tocsr()
        items = history_tokens(rows, self.max_len)
        return self.score_sequences(items, np.zeros_like(items))  # event types unknown

    def fit(self, interactions) -> "OnnxSequentialScorer":  # type: ignore[no-untyped-def]
        raise ExportError("an exported sequential model is not refitted; train it with training.sequential")
