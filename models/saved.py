"""Save and load a ranking model by the kind its file records: a DLRM (no kind, the first format) or a logistic regression."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from models import ModelError
from models.dlrm import DLRM, DLRMConfig, save_model as save_dlrm
from models.logreg import LogisticRegression, LogisticRegressionConfig, save_logreg


def save_model(model: nn.Module, path: Path) -> Path:
    """Write `model` (a `DLRM` or a `LogisticRegression`) to one file that `load_model` reads back."""
    if isinstance(model, LogisticRegression):
        return save_logreg(model, path)
    if isinstance(model, DLRM):
        return save_dlrm(model, path)
    raise ModelError(f"cannot save a {type(model).__name__}: only DLRM and LogisticRegression files exist")


def load_model(path: Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model saved by `save_model`, in eval mode.

    Both kinds take (dense (B, n_dense), sparse (B, n_sparse)) and return logits (B,).
    """
    blob = torch.load(Path(path), map_location=map_location, weights_only=True)
    if blob.get("kind") == "logreg":
        baseline = LogisticRegression(LogisticRegressionConfig(**blob["config"]))
        baseline.load_state_dict(blob["state_dict"])
        return baseline.eval()
    model = DLRM(DLRMConfig(**blob["config"]))
    model.load_state_dict(blob["state_dict"])
    return model.eval()
