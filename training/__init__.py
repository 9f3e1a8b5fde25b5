"""Training: the DLRM ranker, its data loader, trainer and evaluation."""

from training.dlrm import DLRM, DLRMConfig, load_model, save_model

__all__ = ["DLRM", "DLRMConfig", "load_model", "save_model"]
