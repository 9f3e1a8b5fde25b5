"""Training: the data loader, trainer, optimisers, evaluation and distributed launch of the models in `models/`."""

from training.errors import CheckpointError, ConfigError, DataError, TrainingError
from training.evaluate import EvalInputs, EvalReport, evaluate
from training.trainer import TrainConfig, TrainInputs, TrainResult, train

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "EvalInputs",
    "EvalReport",
    "TrainConfig",
    "TrainInputs",
    "TrainResult",
    "TrainingError",
    "evaluate",
    "train",
]
