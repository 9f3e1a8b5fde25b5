"""Registry against a real MLflow store (sqlite tracking, file artifact root)."""

from __future__ import annotations

import json
import os
import re
from itertools import count
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

import registry
from registry import Lineage
from models.dlrm import DLRM, DLRMConfig
from models.saved import load_model, save_model

N_DENSE, CARDINALITIES = 3, [5, 7]
_names = count()


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("mlflow")
    inputs = tmp_path_factory.mktemp("inputs")
    schema = inputs / "schema.json"
    schema.write_text(json.dumps({"categorical": ["user_id", "product_id"], "continuous": ["a"]}))
    workflow = inputs / "workflow"
    (workflow / "categories").mkdir(parents=True)
    (workflow / "workflow.json").write_text('{"ops": []}')
    (workflow / "categories" / "user_id.parquet").write_bytes(b"not really parquet")
    report = inputs / "report.json"
    report.write_text('{"success": true}')
    torch.manual_seed(0)
    model_path = save_model(
        DLRM(DLRMConfig(N_DENSE, CARDINALITIES, embedding_dim=4, bottom_mlp=[8], top_mlp=[8])),
        inputs / "dlrm.pt",
    )
    return {
        "uri": f"sqlite:///{root / 'mlflow.db'}",
        "artifact_root": (root / "artifacts").as_uri(),
        "artifacts": {"schema": schema, "workflow": workflow, "validation_report": report},
        "model_path": model_path,
        "tmp": root,
    }


def log_run(store: dict, ndcg: float, baseline: float, eval_set: str = "test-A", users: int = 500,
            interval: tuple[float, float] | None = None, extra: dict | None = None,
            tags: dict[str, str] | None = None) -> str:
    """A run carrying the full-catalogue comparison the gate reads; the difference interval is centred on
    ndcg - baseline, +-0.02, unless given."""
    low, high = interval or (ndcg - baseline - 0.02, ndcg - baseline + 0.02)
    return registry.log_training_run(
        store["uri"],
        "recsys-tests",
        params={"lr": 0.01, "embedding_dim": 4},
        history=[{"epoch": 1, "loss": 0.6, "valid_auc": 0.6}, {"epoch": 2, "loss": 0.5, "valid_auc": 0.7}],
        eval_metrics={"ndcg_at_10": ndcg, "baseline_ndcg_at_10": baseline, "auc": 0.7,
                      "oracle_auc": None, "k": 10, "eval_users": users,
                      "vs_baseline_ndcg_at_10_ci_low": low, "vs_baseline_ndcg_at_10_ci_high": high} | (extra or {}),
        model_path=store["model_path"],
        artifacts=store["artifacts"],
        lineage=Lineage("abc123", "datahash", eval_set, "2026-11-24", ["raw/date=2026-11-24"]),
        artifact_root=store["artifact_root"],
        tags=tags,
    )


def client_for(store: dict) -> MlflowClient:
    return MlflowClient(store["uri"], registry_uri=store["uri"])


def new_name() -> str:
    return f"ranker-{next(_names)}"


def test_data_hash_follows_content_not_order(tmp_path: Path) -> None:
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("1,2\n")
    b.write_text("3,4\n")
    first = registry.data_hash([a, b])
    assert first == registry.data_hash([b, a])
    assert re.fullmatch(r"[0-9a-f]{64}", first)
    b.write_text("3,5\n")
    assert registry.data_hash([a, b]) != first
    assert registry.data_hash([tmp_path]) != registry.data_hash([a])


def test_git_sha_is_unknown_outside_a_repository(tmp_path: Path) -> None:
    assert registry.git_sha(tmp_path) == "unknown"
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", registry.git_sha())


def test_run_records_params_epoch_metrics_plots_artifacts_and_lineage(store: dict) -> None:
    run_id = log_run(store, ndcg=0.3, baseline=0.2)
    client = client_for(store)
    run = client.get_run(run_id)
    assert run.data.params["lr"] == "0.01"
    assert run.data.metrics["baseline_ndcg_at_10"] == pytest.approx(0.2)
    assert run.data.metrics["k"] == 10 and "oracle_auc" not in run.data.metrics
    history = client.get_metric_history(run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.6), (2, 0.5)]
    assert run.data.tags["lineage.git_sha"] == "abc123"
    assert run.data.tags["lineage.eval_set_hash"] == "test-A"
    assert run.data.tags["lineage.input_paths"] == "raw/date=2026-11-24"
    logged = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert logged == {"plots/learning_curves.png", "plots/model_vs_baseline.png"}
    local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="workflow",
                                                     tracking_uri=store["uri"]))
    assert (local / "categories" / "user_id.parquet").read_bytes() == b"not really parquet"
    assert client.list_artifacts(run_id, "validation_report")[0].path.endswith("report.json")
    png = Path(mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="plots/learning_curves.png", tracking_uri=store["uri"]))
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_file_keys_and_plain_lineage_tags_land_where_named(store: dict) -> None:
    arts = store["artifacts"]
    run_id = registry.log_training_run(
        store["uri"], "recsys-tests", {}, [], {"ndcg_at_10": 0.3, "baseline_ndcg_at_10": 0.2},
        store["model_path"],
        {"schema.json": arts["schema"], "workflow": arts["workflow"],
         "validation/report.json": arts["validation_report"]},
        tags={"git_sha": "def456", "eval_set_hash": "test-B", "owner": "nightly"},
        artifact_root=store["artifact_root"],
    )
    client = client_for(store)
    assert [a.path for a in client.list_artifacts(run_id, "validation")] == ["validation/report.json"]
    assert "schema.json" in {a.path for a in client.list_artifacts(run_id)}
    tags = client.get_run(run_id).data.tags
    assert (tags["lineage.git_sha"], tags["lineage.eval_set_hash"], tags["owner"]) == (
        "def456", "test-B", "nightly")


def test_run_without_workflow_is_refused_with_the_missing_key(store: dict) -> None:
    with pytest.raises(registry.MissingArtifact, match="workflow"):
        registry.log_training_run(
            store["uri"], "recsys-tests", {}, [], {}, store["model_path"],
            {"schema": store["artifacts"]["schema"]},
            Lineage("x", "y", "z", "2026-11-24"),
        )


def test_registered_version_is_challenger_and_downloads_as_deployable_bundle(
    store: dict, tmp_path: Path
) -> None:
    name = new_name()
    version = registry.register_model(store["uri"], log_run(store, 0.3, 0.2), name)
    assert str(client_for(store).get_model_version_by_alias(name, "challenger").version) == version

    assert registry.resolve_version(store["uri"], name, "challenger") == version
    local = registry.download_model(store["uri"], f"models:/{name}@challenger", tmp_path / "dl")
    assert json.loads((local / "schema.json").read_text())["categorical"] == ["user_id", "product_id"]
    assert (local / "workflow" / "workflow.json").read_text() == '{"ops": []}'
    dense = torch.randn(4, N_DENSE)
    sparse = torch.tensor([[0, 1], [4, 6], [2, 3], [1, 0]])
    expected = load_model(store["model_path"])(dense, sparse)
    assert torch.allclose(load_model(local / "dlrm.pt")(dense, sparse), expected)
    # The MLflow pytorch flavour (pt2 export) of the same weights gives the same logits.
    with registry.tracking.tracking(store["uri"]):
        flavoured = mlflow.pytorch.load_model(str(local))
    assert torch.allclose(flavoured(dense, sparse), expected, atol=1e-6)
    signature = mlflow.models.Model.load(str(local)).signature.inputs.to_dict()
    assert [(s["name"], s["tensor-spec"]["dtype"], tuple(s["tensor-spec"]["shape"])) for s in signature] == [
        ("dense", "float32", (-1, N_DENSE)), ("sparse", "int64", (-1, len(CARDINALITIES)))
    ]


def test_logging_leaves_the_process_tracking_uri_alone(store: dict, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    with registry.tracking.tracking(store["uri"]):
        assert mlflow.get_tracking_uri() == store["uri"]
    assert mlflow.get_tracking_uri() == "sqlite:///elsewhere.db"
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///elsewhere.db"


def test_missing_champion_alias_raises_model_not_found(store: dict, tmp_path: Path) -> None:
    name = new_name()
    registry.register_model(store["uri"], log_run(store, 0.3, 0.2), name)
    with pytest.raises(registry.ModelNotFound, match="champion"):
        registry.download_model(store["uri"], f"models:/{name}@champion", tmp_path)


def _champion_version(store: dict, name: str) -> str | None:
    try:
        return str(client_for(store).get_model_version_by_alias(name, "champion").version)
    except mlflow.exceptions.MlflowException:
        return None


def _versus(version: str, champion: float, diff: float, half: float = 0.02) -> registry.ChampionEvidence:
    """Evidence as the evaluate stage hands it: champion `version` scored on the challenger's users, paired."""
    return registry.ChampionEvidence(version=version, metric="ndcg_at_10", champion=champion, diff=diff,
                                     diff_ci_low=diff - half, diff_ci_high=diff + half, users=500)


def test_promotion_gate_sequence(store: dict) -> None:
    """First model beats the baseline on evidence -> champion; a challenger no better than the
    re-scored champion -> kept; a clearly better one -> moved, with its evidence recorded."""
    name = new_name()
    v1 = registry.register_model(store["uri"], log_run(store, 0.30, 0.20), name)
    first = registry.promote(store["uri"], name, v1)
    assert first.promoted and first.champion is None and _champion_version(store, name) == v1

    v2 = registry.register_model(store["uri"], log_run(store, 0.31, 0.20), name)
    tie = _versus(v1, champion=0.30, diff=0.01)  # interval [-0.01, 0.03] includes 0
    kept = registry.promote(store["uri"], name, v2, versus_champion=tie)
    assert not kept.promoted and kept.champion == pytest.approx(0.30) and kept.champion_version == v1
    assert "interval" in kept.reason and registry.champion_version(store["uri"], name) == v1
    assert _champion_version(store, name) == v1

    v3 = registry.register_model(store["uri"], log_run(store, 0.40, 0.20), name)
    better = registry.promote(store["uri"], name, v3, versus_champion=_versus(v1, champion=0.30, diff=0.10))
    assert better.promoted and _champion_version(store, name) == v3
    assert better.evidence["vs_champion_ci_low"] == pytest.approx(0.08)

    client = client_for(store)
    assert client.get_model_version(name, v2).tags["promotion.decision"] == "rejected"
    tags = client.get_model_version(name, v3).tags
    assert tags["promotion.decision"] == "promoted" and tags["promotion.champion_version"] == v1
    assert float(tags["promotion.evidence.users"]) == 500
    run_tags = client.get_run(client.get_model_version(name, v3).run_id).data.tags
    assert run_tags["promotion.decision"] == "promoted"


def test_a_tie_with_the_best_baseline_is_not_promoted(store: dict) -> None:
    """A mean above the baseline is not enough: the interval of the difference must exclude 0."""
    name = new_name()
    version = registry.register_model(store["uri"], log_run(store, 0.22, 0.20, interval=(-0.01, 0.05)), name)
    decision = registry.promote(store["uri"], name, version)
    assert not decision.promoted and "includes 0" in decision.reason
    assert _champion_version(store, name) is None


def test_model_worse_than_baseline_is_never_promoted(store: dict) -> None:
    name = new_name()
    version = registry.register_model(store["uri"], log_run(store, 0.15, 0.20, interval=(-0.08, -0.02)), name)
    decision = registry.promote(store["uri"], name, version)
    assert not decision.promoted and "baseline" in decision.reason and "lies below 0" in decision.reason
    assert _champion_version(store, name) is None


def test_too_few_evaluated_users_is_not_enough_evidence(store: dict) -> None:
    name = new_name()
    version = registry.register_model(store["uri"], log_run(store, 0.50, 0.20, users=4), name)
    decision = registry.promote(store["uri"], name, version, min_users=100)
    assert not decision.promoted and "not enough evidence" in decision.reason
    assert _champion_version(store, name) is None


def test_a_champion_that_cannot_be_rescored_is_kept(store: dict) -> None:
    name = new_name()
    v1 = registry.register_model(store["uri"], log_run(store, 0.30, 0.20), name)
    registry.promote(store["uri"], name, v1)
    v2 = registry.register_model(store["uri"], log_run(store, 0.50, 0.20), name)
    refused = registry.promote(store["uri"], name, v2)  # no evidence about the champion: fail closed
    assert not refused.promoted and "re-evaluated" in refused.reason
    assert _champion_version(store, name) == v1


def test_evidence_about_another_champion_is_refused(store: dict) -> None:
    """Evidence scored against a version that is no longer the champion does not decide (fail closed)."""
    name = new_name()
    v1 = registry.register_model(store["uri"], log_run(store, 0.30, 0.20), name)
    registry.promote(store["uri"], name, v1)
    v2 = registry.register_model(store["uri"], log_run(store, 0.50, 0.20), name)
    stale = registry.promote(store["uri"], name, v2, versus_champion=_versus("999", champion=0.1, diff=0.4))
    assert not stale.promoted and "moved since evaluation" in stale.reason
    assert _champion_version(store, name) == v1


def test_deployment_tag_lands_on_the_version(store: dict) -> None:
    name = new_name()
    version = registry.register_model(store["uri"], log_run(store, 0.3, 0.2), name)
    registry.set_deployment_tag(store["uri"], name, version, "sagemaker", "recsys-endpoint")
    tags = client_for(store).get_model_version(name, version).tags
    assert tags["deployment.sagemaker.endpoint"] == "recsys-endpoint"
    assert tags["deployment.latest_target"] == "sagemaker"


def test_drift_above_the_block_threshold_refuses_promotion_with_its_reason(store: dict) -> None:
    """A model that would be promoted on its metrics is refused when its night drifted past the block line."""
    name = new_name()
    drifted = registry.register_model(store["uri"], log_run(
        store, 0.40, 0.20, extra={"drift_psi_max": 0.31}, tags={"drift": "block", "drift.worst": "item.conversion"}),
        name)
    decision = registry.promote(store["uri"], name, drifted, drift_block=0.25)
    assert not decision.promoted and "drift" in decision.reason and "item.conversion" in decision.reason
    assert decision.evidence["drift_psi_max"] == pytest.approx(0.31) and _champion_version(store, name) is None
    assert client_for(store).get_model_version(name, drifted).tags["promotion.reason"] == decision.reason
    calm = registry.register_model(store["uri"], log_run(store, 0.40, 0.20, extra={"drift_psi_max": 0.12}), name)
    assert registry.promote(store["uri"], name, calm, drift_block=0.25).promoted  # a warn level does not block
