"""Re-scoring a registered model on another test set, for the promotion gate's champion check."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from registry.models import download_model
from registry.promotion import Reevaluate
from registry.tracking import WEIGHTS_FILE

logger = logging.getLogger(__name__)


def reevaluator(tracking_uri: str, data: Any, k: int = 10) -> Reevaluate:
    """A `reevaluate` for `promote`: downloads the model URI and runs `training.evaluate` on `data`.

    data: `training.evaluate.EvalInputs` of the challenger's run (its train/test dirs, schema).
    Returns metrics keyed like the logged ones (`ndcg_at_10`, `baseline_ndcg_at_10`, ...).
    """
    from training.evaluate import evaluate  # heavy (torch, pandas); only needed on this path

    def reevaluate(model_uri: str) -> dict[str, float]:
        with tempfile.TemporaryDirectory() as tmp:
            local = download_model(tracking_uri, model_uri, Path(tmp))
            report = evaluate(local / WEIGHTS_FILE, data, k=k)
        logger.info("re-evaluated %s on %s", model_uri, getattr(data, "test_dir", data))
        return {key: float(value) for key, value in report.to_dict().items()}

    return reevaluate
