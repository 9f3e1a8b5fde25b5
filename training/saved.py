"""Load a saved model file by the kind it records: a DLRM (no kind: the first format) or a logistic regression."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from training.baselines import LogisticRegression, LogisticRegressionConfig
from training.dlrm import DLRM, DLRMConfig


def load_model(path: Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model saved by `dlrm.save_model` or `baselines.save_logreg`, in eval mode.

    Both take (dense (B, n_dense), sparse (B, n_sparse)) and return logits (B,).
    """
    blob = torch.load(Path(path), map_location=map_location, weights_only=True)
    if blob.get("kind") == "logreg":
        baseline = LogisticRegression(LogisticRegressionConfig(**blob["config"]))
        baseline.load_state_dict(blob["state_dict"])
        return baseline.eval()
    model = DLRM(DLRMConfig(**blob["config"]))
    model.load_state_dict(blob["state_dict"])
    return model.eval()
