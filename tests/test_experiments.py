"""Online experiments end to end on the real API, MLflow and Airflow: a simulated shop whose customers follow
a planted preference shops through both arms; the better arm wins and is promoted (decided by the
`evaluate_experiment` DAG under `airflow dags test`), a worse treatment is rolled back, an A/A test
declares no winner."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from mlflow.tracking import MlflowClient

from api import create_app
from api.experiments import BUCKETS, Active, Experiments, bucket, create_experiment
from api.store import Experiment, Impression
from settings import Settings
from tests.conftest import REPO
from tests.shop import ContraryRanker, PreferenceRanker, ShopTruth, open_shop, shop
from tests.test_api_support import make_config

MODEL = "shop-ranker"
TRUTH = ShopTruth()
GUARDRAILS = {"min_impressions": 120, "max_days": 14}
VISITS = 360
RUN_DATE = date(2026, 12, 1)


@pytest.fixture(scope="module")
def registry_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A real MLflow registry holding versions 1 (champion) and 2 of MODEL."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(MODEL)
    for v in ("1", "2"):
        (root / f"m{v}").mkdir()
        client.create_model_version(MODEL, source=str(root / f"m{v}"))
    client.set_registered_model_alias(MODEL, "champion", "1")
    return uri


def _settings(home: Path, registry_uri: str) -> Settings:
    return dataclasses.replace(Settings.from_env(), home=home, database_url=f"sqlite:///{home / 'api.db'}",
                               mlflow_tracking_uri=registry_uri, model_name=MODEL,
                               mlflow_artifact_root=(home / "mlartifacts").as_uri())


def _reset_champion(registry_uri: str) -> None:
    MlflowClient(tracking_uri=registry_uri, registry_uri=registry_uri).set_registered_model_alias(MODEL, "champion", "1")


def _champion(registry_uri: str) -> str:
    return str(MlflowClient(tracking_uri=registry_uri, registry_uri=registry_uri).get_model_version_by_alias(
        MODEL, "champion").version)


@pytest.fixture
def shop_app(tmp_path: Path) -> Iterator[Any]:
    """Build an app whose arms rank with the given rankers (version "1" = control, "2" = treatment)."""
    made: list[Flask] = []

    def build(control: Any, treatment: Any, holdout: float = 0.0) -> Flask:
        rankers = {"1": control, "2": treatment}
        app = create_app(make_config(tmp_path, EXPERIMENT_TTL_S=0.0), ranker=control, arm_rankers=rankers.__getitem__)
        made.append(app)
        open_shop(app.test_client(), TRUTH)
        share = (1.0 - holdout) / 2
        create_experiment(app.extensions["recsys_store"], "shop-test", {"control": "1", "treatment": "2"},
                          {"control": share, "treatment": share}, holdout, "control", GUARDRAILS)
        return app

    yield build
    for app in made:
        app.extensions["recsys_store"].dispose()


def test_assignment_is_stable_independent_per_experiment_and_follows_the_shares() -> None:
    row = Experiment(id="e1", arms=json.dumps({"a": "1", "b": "2"}), shares=json.dumps({"a": 0.6, "b": 0.3}),
                     holdout=0.1)
    active, again = Active.of(row), Active.of(row)
    arms = [active.assign(c) for c in range(1, 20_001)]
    assert arms == [again.assign(c) for c in range(1, 20_001)]  # same answer in every worker
    for arm, share in (("holdout", 0.1), ("a", 0.6), ("b", 0.3)):
        assert abs(arms.count(arm) / len(arms) - share) < 0.015
    other = [bucket("e2", c) < BUCKETS // 2 for c in range(1, 2001)]
    first = [bucket("e1", c) < BUCKETS // 2 for c in range(1, 2001)]
    agreement = sum(x == y for x, y in zip(first, other)) / len(first)
    assert 0.45 < agreement < 0.55  # a new experiment reshuffles customers


def test_every_response_is_logged_and_interactions_are_attributed(tmp_path: Path) -> None:
    app = create_app(make_config(tmp_path), ranker=PreferenceRanker(TRUTH))
    client = app.test_client()
    open_shop(client, TRUTH)
    first, second = (client.get("/customers/3/recommendations?k=4").json for _ in range(2))
    assert first["arm"] == "default" and first["experiment_id"] is None
    assert isinstance(first["recommendation_id"], int) and second["recommendation_id"] != first["recommendation_id"]
    with app.extensions["recsys_store"].session() as session:
        logged = session.get(Impression, first["recommendation_id"])
        assert logged.customer_id == 3 and logged.items == ",".join(str(i["product_id"]) for i in first["items"])
    product = first["items"][2]["product_id"]
    made = client.post("/interactions", json={"customer_id": 3, "product_id": product, "event_type": "view",
                                              "recommendation_id": first["recommendation_id"], "position": 2})
    assert made.status_code == 201 and (made.json["recommendation_id"], made.json["position"]) == (
        first["recommendation_id"], 2)
    assert client.get(f"/interactions/{made.json['id']}").json["position"] == 2
    bad = [({"position": 1}, 422, "recommendation_id"), ({"recommendation_id": first["recommendation_id"],
                                                          "position": 100}, 422, "position"),
           ({"recommendation_id": 10**9, "position": 0}, 409, "recommendation_id"),
           ({"recommendation_id": "1"}, 422, "recommendation_id")]
    for extra, status, word in bad:
        got = client.post("/interactions", json={"customer_id": 3, "product_id": product, "event_type": "view"} | extra)
        assert got.status_code == status and word in got.json["error"]["detail"], (extra, got.json)
    assert client.get("/experiments/nope").status_code == 404
    assert client.get("/experiments/Bad%20Id").status_code == 404
    assert client.get("/experiments").json == {"items": []}
    app.extensions["recsys_store"].dispose()


@pytest.mark.integration  # real MLflow (and Airflow)
def test_ab_better_treatment_wins_under_the_dag_and_is_promoted(shop_app, tmp_path: Path, registry_uri: str) -> None:
    _reset_champion(registry_uri)
    app = shop_app(ContraryRanker(TRUTH), PreferenceRanker(TRUTH), holdout=0.1)
    served = shop(app.test_client(), TRUTH, VISITS, seed=1)
    assert set(served) == {"control", "treatment", "holdout"}
    live = app.test_client().get("/experiments/shop-test").json
    figures = {arm: live["arms"][arm]["figures"] for arm in live["arms"]}
    assert live["state"] == "running" and live["arms"]["treatment"]["version"] == "2"
    assert figures["treatment"]["ctr"] > figures["control"]["ctr"]
    assert sum(f["impressions"] for f in figures.values()) == VISITS

    env = os.environ | {"RECSYS_HOME": str(tmp_path), "RECSYS_DATABASE_URL": f"sqlite:///{tmp_path / 'api.db'}",
                        "MLFLOW_TRACKING_URI": registry_uri, "RECSYS_MODEL_NAME": MODEL}
    for args in (["db", "migrate"], ["dags", "test", "evaluate_experiment", RUN_DATE.isoformat(),
                                      "-c", json.dumps({"deploy": False})]):
        done = subprocess.run([sys.executable, "-m", "cli", "airflow", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    assert _champion(registry_uri) == "2"
    after = app.test_client().get("/experiments/shop-test").json
    assert after["state"] == "promoted" and after["ended_at"] is not None
    assert after["decision"]["outcome"] == "promote" and after["decision"]["winner"] == "treatment"
    assert after["decision"]["primary"]["p_value"] <= 0.05
    assert app.test_client().get("/customers/5/recommendations").json["arm"] == "default"  # experiment over
    runs = MlflowClient(tracking_uri=registry_uri).search_runs(
        [MlflowClient(tracking_uri=registry_uri).get_experiment_by_name("online-experiments").experiment_id])
    assert runs and runs[0].data.tags["experiment.outcome"] == "promote"
    assert runs[0].data.metrics["treatment.ctr"] > runs[0].data.metrics["control.ctr"]
    artifacts = {a.path for a in MlflowClient(tracking_uri=registry_uri).list_artifacts(runs[0].info.run_id)}
    assert {"arms.png", "decision.json"} <= artifacts


@pytest.mark.integration  # real MLflow (and Airflow)
def test_ab_worse_treatment_is_rolled_back_and_the_champion_kept(shop_app, tmp_path: Path,
                                                                  registry_uri: str) -> None:
    from stages.experiments import evaluate

    _reset_champion(registry_uri)
    app = shop_app(PreferenceRanker(TRUTH), ContraryRanker(TRUTH))
    shop(app.test_client(), TRUTH, VISITS, seed=2)
    result = evaluate(RUN_DATE.isoformat(), _settings(tmp_path, registry_uri))
    assert (result["outcome"], result["winner"], result["version"]) == ("rollback", "control", "1")
    assert _champion(registry_uri) == "1"
    assert app.test_client().get("/experiments/shop-test").json["state"] == "rolled_back"
    assert app.test_client().get("/customers/5/recommendations").json["arm"] == "default"


@pytest.mark.integration  # real MLflow (and Airflow)
def test_aa_declares_no_winner(shop_app, tmp_path: Path, registry_uri: str) -> None:
    from stages.experiments import evaluate

    _reset_champion(registry_uri)
    same = PreferenceRanker(TRUTH)
    app = shop_app(same, same)
    shop(app.test_client(), TRUTH, VISITS, seed=3)
    result = evaluate(RUN_DATE.isoformat(), _settings(tmp_path, registry_uri))
    assert result["outcome"] == "continue" and result["winner"] is None
    live = app.test_client().get("/experiments/shop-test").json
    assert live["state"] == "running" and live["decision"]["outcome"] == "continue"
    assert min(live["arms"][a]["figures"]["impressions"] for a in ("control", "treatment")) >= GUARDRAILS["min_impressions"]
    assert live["decision"]["running_p"]["primary"] > 0.05
    assert _champion(registry_uri) == "1"


def test_an_arm_whose_ranker_cannot_be_built_serves_the_default(tmp_path: Path) -> None:
    def broken(version: str) -> Any:
        raise RuntimeError("no bundle")

    default = PreferenceRanker(TRUTH)
    experiments = Experiments(store=None, ttl_s=1.0, ranker_factory=broken)  # type: ignore[arg-type]
    from api.experiments import Assignment

    assert experiments.ranker(Assignment("e", "treatment", "9"), default) is default
    assert experiments.ranker(Assignment(None, "default", None), default) is default


def test_impressions_can_be_limited_to_experiments(tmp_path: Path) -> None:
    app = create_app(make_config(tmp_path, IMPRESSIONS="experiment", EXPERIMENT_TTL_S=0.0),
                     ranker=PreferenceRanker(TRUTH), arm_rankers=lambda version: PreferenceRanker(TRUTH))
    client = app.test_client()
    open_shop(client, TRUTH)
    assert client.get("/customers/3/recommendations").json["recommendation_id"] is None
    create_experiment(app.extensions["recsys_store"], "only", {"a": "1", "b": "2"}, {"a": 0.5, "b": 0.5}, 0.0, "a", {})
    during = client.get("/customers/3/recommendations").json
    assert during["experiment_id"] == "only" and isinstance(during["recommendation_id"], int)
    app.extensions["recsys_store"].dispose()


def test_a_deploy_during_an_experiment_keeps_the_other_arms_bundle_loaded(tmp_path: Path) -> None:
    from api.store import Store
    from stages.deploy import _experiment_bundles

    settings = dataclasses.replace(Settings.from_env(), home=tmp_path, database_url=f"sqlite:///{tmp_path / 'api.db'}")
    for version in ("4", "5"):
        (settings.serving_dir / version).mkdir(parents=True)
        (settings.serving_dir / version / "deployment.json").write_text("{}")
    assert _experiment_bundles(settings, settings.serving_dir / "4") == []  # no API database yet: nothing extra
    store = Store(settings.database_url)
    store.init_db()
    create_experiment(store, "during", {"a": "4", "b": "5"}, {"a": 0.5, "b": 0.5}, 0.0, "a", {})
    store.dispose()
    assert _experiment_bundles(settings, settings.serving_dir / "4") == [settings.serving_dir / "5"]
    assert _experiment_bundles(settings, settings.serving_dir / "6") == [settings.serving_dir / v for v in ("4", "5")]
