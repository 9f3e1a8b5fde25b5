"""The training loop: learning a planted interaction, checkpoints and resume, early stopping, config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.test_training_support import PlantedData, write_etl_output
from training import ConfigError, TrainConfig, TrainInputs, train
from training.__main__ import main

FAST = dict(batch_size=512, embedding_dim=8, bottom_mlp=[16], top_mlp=[32], lr=1e-2, embedding_lr=0.2, device="cpu")


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_etl_output(tmp_path_factory.mktemp("planted"))


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_etl_output(tmp_path_factory.mktemp("small"), PlantedData(rows=(3000, 600, 600)))


def test_dlrm_beats_logistic_regression_on_a_planted_interaction(planted: Path, tmp_path: Path) -> None:
    inputs = TrainInputs.from_etl_dir(planted)
    dlrm = train(inputs, TrainConfig(epochs=5, **FAST), tmp_path / "dlrm")
    logreg = train(inputs, TrainConfig(model="logreg", epochs=3, **FAST), tmp_path / "logreg")
    assert dlrm.best_valid_auc > 0.75
    assert dlrm.best_valid_auc > logreg.best_valid_auc + 0.1
    assert dlrm.model_path.is_file() and dlrm.checkpoint_path.is_file()
    assert dlrm.history and all(set(row) >= {"train_loss", "valid_auc", "valid_logloss", "samples_per_s"} for row in dlrm.history)
    assert dlrm.history[-1]["train_loss"] < dlrm.history[0]["train_loss"]


class Interrupted(Exception):
    pass


def test_resuming_after_an_interruption_gives_the_uninterrupted_weights(small: Path, tmp_path: Path) -> None:
    inputs = TrainInputs.from_etl_dir(small)
    config = dict(FAST, epochs=3, warmup_steps=3, lr_decay="cosine", patience=5)
    full = train(inputs, TrainConfig(**config), tmp_path / "full")

    def stop_after_first_epoch(row: dict[str, float]) -> None:
        if row["epoch"] == 0:
            raise Interrupted

    with pytest.raises(Interrupted):
        train(inputs, TrainConfig(**config), tmp_path / "cut", on_epoch_end=stop_after_first_epoch)
    checkpoint = tmp_path / "cut" / "checkpoints" / "checkpoint.pt"
    resumed = train(inputs, TrainConfig(**config, resume_from=checkpoint), tmp_path / "cut")

    assert len(resumed.history) == 3
    def without_timing(history: list[dict[str, float]]) -> list[dict[str, float]]:
        return [{k: v for k, v in row.items() if k != "samples_per_s"} for row in history]

    assert without_timing(resumed.history) == without_timing(full.history)
    a = torch.load(full.checkpoint_path, weights_only=False)
    b = torch.load(resumed.checkpoint_path, weights_only=False)
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert torch.equal(a["sparse_optimizer"]["state_sum"], b["sparse_optimizer"]["state_sum"])


def test_training_stops_early_when_validation_auc_stalls(small: Path, tmp_path: Path) -> None:
    # Learning rates far below float32 resolution leave the weights, hence the AUC, unchanged.
    config = TrainConfig(**dict(FAST, lr=1e-30, embedding_lr=1e-30, optimizer="sgd", embedding_optimizer="sgd"),
                         epochs=10, patience=2)
    result = train(TrainInputs.from_etl_dir(small), config, tmp_path)
    assert result.stopped_early
    assert len(result.history) == 3 and result.best_epoch == 0


@pytest.mark.parametrize("options", [dict(precision="bf16"), dict(interaction="dcn", n_cross_layers=2)])
def test_bf16_and_dcn_variants_train_to_finite_scores(small: Path, tmp_path: Path, options: dict) -> None:
    result = train(TrainInputs.from_etl_dir(small), TrainConfig(**dict(FAST, epochs=1, **options)), tmp_path)
    assert 0.0 <= result.best_valid_auc <= 1.0
    assert torch.isfinite(torch.tensor(result.history[0]["train_loss"]))


def test_config_loads_from_yaml_and_rejects_unknown_or_bad_values(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("embedding_dim: 32\nbottom_mlp: [128, 64]\ninteraction: dcn\nprecision: bf16\n")
    config = TrainConfig.from_yaml(path)
    assert (config.embedding_dim, config.bottom_mlp, config.interaction) == (32, [128, 64], "dcn")
    with pytest.raises(ConfigError, match="unknown training config keys \\['embeding_dim'\\]"):
        TrainConfig.from_dict({"embeding_dim": 8})
    with pytest.raises(ConfigError, match="precision"):
        TrainConfig(precision="fp8")


def test_cli_trains_then_evaluates(small: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps(dict(FAST, epochs=1)))  # JSON is valid YAML
    assert main(["train", "--data", str(small), "--out", str(tmp_path / "run"), "--config", str(config)]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert Path(trained["model_path"]).is_file()
    assert main(["evaluate", "--model", trained["model_path"], "--data", str(small), "-k", "5"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"auc", "logloss", "recall_at_5", "ndcg_at_5", "baseline_ndcg_at_5"} <= set(report)
    assert main(["evaluate", "--model", trained["model_path"], "--data", str(tmp_path / "missing")]) == 2


def test_cpu_step_is_compiled_only_for_runs_long_enough_to_repay_the_compile() -> None:
    from training.fastpath import CPU_COMPILE_MIN_STEPS
    from training.trainer import step_options

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    short, long = CPU_COMPILE_MIN_STEPS - 1, CPU_COMPILE_MIN_STEPS
    assert not step_options(TrainConfig(), cpu, short).compile
    long_cpu = step_options(TrainConfig(), cpu, long)
    assert long_cpu.compile and not long_cpu.cuda_graph  # CUDA graphs exist only on CUDA
    assert not step_options(TrainConfig(fast_path=False), cpu, long).compile
    # CUDA compiles whatever the length (building options touches no GPU)
    assert step_options(TrainConfig(precision="fp32"), cuda, 1).compile
    assert step_options(TrainConfig(precision="fp32"), cuda, 1).cuda_graph
    assert not step_options(TrainConfig(precision="fp32", fast_path=False), cuda, 1).compile
    # max-autotune is asked for, and only applies to the compiled CUDA step
    assert not step_options(TrainConfig(precision="fp32"), cuda, 1).autotune
    assert step_options(TrainConfig(precision="fp32", autotune=True), cuda, 1).autotune
    assert not step_options(TrainConfig(autotune=True), cpu, long).autotune
