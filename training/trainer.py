"""Train the DLRM (or the logistic baseline) on the ETL output: config, loop, checkpoints, early stop."""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from contracts import SCHEMA_FILE
from models.dlrm import DLRM, DLRMConfig, save_model
from models.logreg import LogisticRegression, LogisticRegressionConfig, save_logreg
from training.data import BatchIterator, InteractionTensors, Schema, load_schema, load_split
from training.errors import CheckpointError, ConfigError
from training.fastpath import StepOptions, TrainStep, compile_pays_off, native_bf16
from training.metrics import auc, logloss
from training.optim import LRSchedule

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.pt"


@dataclass(frozen=True)
class TrainInputs:
    """The ETL output a training run reads."""

    train_dir: Path
    valid_dir: Path
    schema_path: Path

    @classmethod
    def from_etl_dir(cls, etl_dir: Path) -> "TrainInputs":
        etl_dir = Path(etl_dir)
        return cls(etl_dir / "train", etl_dir / "valid", etl_dir / SCHEMA_FILE)


@dataclass
class TrainConfig:
    """Everything that shapes a training run; load from a dict or YAML with `from_dict`/`from_yaml`."""

    model: str = "dlrm"  # "dlrm" or "logreg" (the baseline)
    embedding_dim: int = 16
    bottom_mlp: list[int] = field(default_factory=lambda: [64, 32])
    top_mlp: list[int] = field(default_factory=lambda: [64, 32])
    interaction: str = "dot"  # "dot" or "dcn"
    n_cross_layers: int = 2
    lr: float = 1e-3  # dense (MLP) optimizer
    embedding_lr: float = 0.05  # sparse (embedding) optimizer
    optimizer: str = "adam"  # MLPs: "adam", "adamw", "sgd"
    embedding_optimizer: str = "rowwise_adagrad"  # "rowwise_adagrad" or "sgd"
    weight_decay: float = 0.0  # MLPs only
    warmup_steps: int = 0
    lr_decay: str = "none"  # "none", "linear", "cosine" after warm-up, over all planned steps
    min_lr_ratio: float = 0.1
    batch_size: int = 4096
    epochs: int = 3
    patience: int = 2  # epochs without a better validation AUC before stopping
    precision: str = "auto"  # "fp32", "bf16" (autocast) or "auto": bf16 where the device has native bf16 GEMMs
    device: str = "auto"  # "auto", "cpu", "cuda"
    # torch.compile of the step (CUDA: always, plus one CUDA graph per step; CPU: only runs of at least
    # training.fastpath.CPU_COMPILE_MIN_STEPS planned steps, see compile_pays_off); False: eager everywhere
    fast_path: bool = True
    # CUDA fast path only: compile the MLPs with inductor's max-autotune (Triton GEMMs with bias and
    # ReLU fused in: +7% samples/s at config b on an H200) for ~2 min of autotuning per batch shape
    # on a machine's first run (inductor caches the choices). Worth it for long GPU runs.
    autotune: bool = False
    seed: int = 0
    checkpoint_dir: Path | None = None  # default: <out_dir>/checkpoints
    resume_from: Path | None = None  # a checkpoint.pt to continue from

    def __post_init__(self) -> None:
        choices = {
            "model": ("dlrm", "logreg"),
            "interaction": ("dot", "dcn"),
            "optimizer": ("adam", "adamw", "sgd"),
            "embedding_optimizer": ("rowwise_adagrad", "sgd"),
            "lr_decay": ("none", "linear", "cosine"),
            "precision": ("auto", "fp32", "bf16"),
            "device": ("auto", "cpu", "cuda"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}={getattr(self, name)!r} is not one of {allowed}")
        for name in ("embedding_dim", "batch_size", "epochs", "patience"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.embedding_lr <= 0:
            raise ConfigError(f"learning rates must be > 0, got lr={self.lr}, embedding_lr={self.embedding_lr}")
        if self.checkpoint_dir is not None:
            self.checkpoint_dir = Path(self.checkpoint_dir)
        if self.resume_from is not None:
            self.resume_from = Path(self.resume_from)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown training config keys {unknown}; known keys: {sorted(known)}")
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: Path) -> "TrainConfig":
        import yaml  # only the CLI needs YAML; the GPU bench machine lacks it

        values = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{path} must hold a mapping of training config keys")
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}


@dataclass
class TrainResult:
    """What a run produced: the best model, per-epoch history and the last checkpoint."""

    model_path: Path
    history: list[dict[str, float]]
    best_valid_auc: float
    best_epoch: int
    checkpoint_path: Path
    stopped_early: bool = False


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' was asked for but torch sees no CUDA GPU; use 'auto' or 'cpu'")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_model(config: TrainConfig, schema: Schema) -> nn.Module:
    if config.model == "logreg":
        return LogisticRegression(LogisticRegressionConfig(schema.n_dense, list(schema.cardinalities)))
    return DLRM(
        DLRMConfig(
            n_dense=schema.n_dense,
            cardinalities=list(schema.cardinalities),
            embedding_dim=config.embedding_dim,
            bottom_mlp=list(config.bottom_mlp),
            top_mlp=list(config.top_mlp),
            interaction=config.interaction,
            n_cross_layers=config.n_cross_layers,
        )
    )


def _save(model: nn.Module, path: Path) -> Path:
    cpu_model = copy.deepcopy(model).to("cpu")
    if isinstance(cpu_model, LogisticRegression):
        return save_logreg(cpu_model, path)
    return save_model(cpu_model, path)  # type: ignore[arg-type]


@torch.no_grad()
def predict(model: nn.Module, data: InteractionTensors, batch_size: int = 65536) -> np.ndarray:
    """Probabilities (N,) float64 for every row, in row order."""
    model.eval()
    out = [
        torch.sigmoid(model(batch.dense, batch.sparse).float()).cpu()
        for batch in BatchIterator(data, batch_size, shuffle=False).epoch(0)
    ]
    return torch.cat(out).double().numpy() if out else np.empty(0)


def step_options(config: TrainConfig, device: torch.device, planned_steps: int) -> StepOptions:
    """The step `train()` builds for a run of `planned_steps` steps (epochs x batches per epoch)."""
    compiled = config.fast_path and compile_pays_off(device, planned_steps)
    return StepOptions(
        lr=config.lr,
        embedding_lr=config.embedding_lr,
        optimizer=config.optimizer,
        embedding_optimizer=config.embedding_optimizer,
        weight_decay=config.weight_decay,
        bf16=config.precision == "bf16" or (config.precision == "auto" and native_bf16(device)),
        compile=compiled,
        cuda_graph=compiled and device.type == "cuda",
        autotune=compiled and config.autotune and device.type == "cuda",
    )


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def train(
    data: TrainInputs,
    config: TrainConfig,
    out_dir: Path,
    on_epoch_end: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train on `data.train_dir`, select by validation AUC, write `<out_dir>/model.pt`.

    A checkpoint (model, both optimizers, RNG, epoch, history) is written after every epoch; with
    `config.resume_from` set, the run continues after that checkpoint's epoch and ends with the
    same weights an uninterrupted run would have. `on_epoch_end` sees each epoch's history row.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_dir = config.checkpoint_dir or out_dir / "checkpoints"
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = checkpoint_dir / CHECKPOINT_FILE
    model_path = out_dir / MODEL_FILE
    device = resolve_device(config.device)

    schema = load_schema(data.schema_path)
    train_rows = load_split(data.train_dir, schema).to(device, pin_memory=True)
    valid_rows = load_split(data.valid_dir, schema).to(device, pin_memory=True)
    valid_labels = valid_rows.label.cpu().numpy()

    torch.manual_seed(config.seed)
    model = build_model(config, schema).to(device)
    batches = BatchIterator(train_rows, config.batch_size, shuffle=True, seed=config.seed)
    planned_steps = config.epochs * len(batches)
    schedule = LRSchedule(config.warmup_steps, planned_steps, config.lr_decay, config.min_lr_ratio)
    stepper = TrainStep(model, step_options(config, device, planned_steps), device)

    history: list[dict[str, float]] = []
    best_auc, best_epoch, bad_epochs, start_epoch = float("-inf"), -1, 0, 0
    if config.resume_from is not None:
        start_epoch, history, best_auc, best_epoch, bad_epochs = _resume(config.resume_from, model, stepper, device)
        log.info("resumed from %s after epoch %d", config.resume_from, start_epoch - 1)

    stopped_early = False
    for epoch in range(start_epoch, config.epochs):
        if bad_epochs >= config.patience:
            stopped_early = True
            break
        model.train()
        started = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        for batch in batches.epoch(epoch):
            stepper.set_lr_factor(schedule.factor(stepper.step_count))
            # Accumulate on the device: one host sync per epoch, not per step.
            loss_sum += stepper(batch.dense, batch.sparse, batch.label) * len(batch.label)
            stepper.step_count += 1
        train_loss = float(loss_sum) / len(train_rows)
        seconds = time.perf_counter() - started
        probabilities = predict(model, valid_rows)
        row = {
            "epoch": float(epoch),
            "train_loss": train_loss,
            "valid_auc": auc(valid_labels, probabilities),
            "valid_logloss": logloss(valid_labels, probabilities),
            "samples_per_s": len(train_rows) / seconds,
            "lr": config.lr * schedule.factor(stepper.step_count - 1),
        }
        history.append(row)
        if row["valid_auc"] > best_auc:
            best_auc, best_epoch, bad_epochs = row["valid_auc"], epoch, 0
            _save(model, model_path)
        else:
            bad_epochs += 1
        log.info(
            "epoch %d/%d train_loss=%.4f valid_auc=%.4f valid_logloss=%.4f samples/s=%.0f",
            epoch + 1, config.epochs, train_loss, row["valid_auc"], row["valid_logloss"], row["samples_per_s"],
        )
        torch.save(
            {
                "epoch": epoch,
                "config": config.to_dict(),
                "model": model.state_dict(),
                "dense_optimizer": stepper.dense_opt.state_dict(),
                "sparse_optimizer": stepper.sparse_opt.state_dict(),
                "step_count": stepper.step_count,
                "rng": _rng_state(),
                "history": history,
                "best_valid_auc": best_auc,
                "best_epoch": best_epoch,
                "bad_epochs": bad_epochs,
            },
            checkpoint_path,
        )
        if on_epoch_end is not None:
            on_epoch_end(row)
    if not model_path.exists():  # e.g. every validation AUC was NaN (one class only)
        _save(model, model_path)
    return TrainResult(model_path, history, best_auc, best_epoch, checkpoint_path, stopped_early)


def _resume(
    path: Path, model: nn.Module, stepper: TrainStep, device: torch.device
) -> tuple[int, list[dict[str, float]], float, int, int]:
    if not Path(path).is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; drop resume_from to start afresh")
    blob = torch.load(path, map_location=device, weights_only=False)
    try:
        model.load_state_dict(blob["model"])
        stepper.dense_opt.load_state_dict(blob["dense_optimizer"])
        stepper.sparse_opt.load_state_dict(blob["sparse_optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"checkpoint {path} does not match this model/optimizer config ({exc}); "
            "resume with the config it was written with"
        ) from exc
    stepper.step_count = int(blob["step_count"])
    torch.set_rng_state(blob["rng"]["torch"].cpu())
    if "cuda" in blob["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in blob["rng"]["cuda"]])
    return (
        int(blob["epoch"]) + 1,
        list(blob["history"]),
        float(blob["best_valid_auc"]),
        int(blob["best_epoch"]),
        int(blob["bad_epochs"]),
    )
