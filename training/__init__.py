"""Training: the DLRM ranker, its data loader, trainer and evaluation."""

from training.dlrm import DLRM, DLRMConfig, save_model
from training.errors import CheckpointError, ConfigError, DataError, TrainingError
from training.evaluate import EvalInputs, EvalReport, evaluate
from training.saved import load_model
from training.trainer import TrainConfig, TrainInputs, TrainResult, train

__all__ = [
    "DLRM",
    "CheckpointError",
    "ConfigError",
    "DLRMConfig",
    "DataError",
    "EvalInputs",
    "EvalReport",
    "TrainConfig",
    "TrainInputs",
    "TrainResult",
    "TrainingError",
    "load_model",
    "evaluate",
    "save_model",
    "train",
]
