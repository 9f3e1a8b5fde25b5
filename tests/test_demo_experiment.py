"""The pieces the demo's A/A experiment adds: registering a version again (stages.experiments.register_copy)
and the HTTP shopper (ops.shopper) whose events the experiment attributes to the arms."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from werkzeug.serving import make_server

from api import create_app
from api.experiments import arm_counts, create_experiment
from ops import shopper
from stages import experiments
from settings import Settings
from tests.shop import PreferenceRanker, ShopTruth, open_shop
from tests.test_api_support import make_config

MODEL = "demo-model"


def test_register_copy_adds_a_version_of_the_same_run_and_moves_no_alias(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(MODEL)
    run = client.create_run(client.create_experiment("x", artifact_location=(tmp_path / "art").as_uri()))
    (tmp_path / "m").mkdir()
    client.create_model_version(MODEL, source=str(tmp_path / "m"), run_id=run.info.run_id)
    client.set_registered_model_alias(MODEL, "champion", "1")
    settings = dataclasses.replace(Settings.from_env(), mlflow_tracking_uri=uri, model_name=MODEL)

    assert experiments.register_copy(settings, "champion") == "2"
    copy, original = client.get_model_version(MODEL, "2"), client.get_model_version(MODEL, "1")
    assert (copy.source, copy.run_id) == (original.source, original.run_id)
    assert copy.tags["experiment.copy_of"] == "1"
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"


def test_preferences_are_each_customers_most_frequent_categories() -> None:
    events = pd.DataFrame({"user_id": [1, 1, 1, 1, 2, 2, 2], "category_id": [5, 5, 7, 9, 3, 3, 4]})
    assert shopper.preferences(events, top=1) == {1: {5}, 2: {3}}
    assert shopper.preferences(events, top=2)[2] == {3, 4}


@pytest.fixture
def live_api(tmp_path: Path) -> Iterator[tuple[str, object]]:
    """The real app over HTTP (werkzeug on a free port) with a running A/A experiment."""
    truth = ShopTruth(n_customers=40)
    ranker = PreferenceRanker(truth)
    app = create_app(make_config(tmp_path, EXPERIMENT_TTL_S=0.0), ranker=ranker, arm_rankers=lambda v: ranker)
    open_shop(app.test_client(), truth)
    store = app.extensions["recsys_store"]
    create_experiment(store, "aa", {"control": "1", "treatment": "2"}, {"control": 0.5, "treatment": 0.5}, 0.0,
                      "control", {"min_impressions": 50})
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", (app, truth)
    finally:
        server.shutdown()
        thread.join(timeout=10)
        store.dispose()


def test_shopper_traffic_is_attributed_to_both_arms(live_api: tuple[str, object]) -> None:
    url, (app, truth) = live_api
    liked = {c: {truth.preference(c)} for c in range(1, truth.n_customers + 1)}
    category_of = {p: truth.category(p) for p in range(1, truth.n_categories * truth.per_category + 1)}
    done = shopper.shop(url, liked, category_of, visits=80, seed=3, k=5, timeout_s=30)

    assert done.visits == 80 and set(done.per_arm) == {"control", "treatment"}
    counts = arm_counts(app.extensions["recsys_store"], "aa")
    assert sum(counts[a]["impressions"] for a in ("control", "treatment")) == 80
    assert sum(counts[a]["clicks"] for a in ("control", "treatment")) == done.events["view"] > 0
    # the ranker puts the liked category first: clicks follow the planted preference, not the floor rate
    assert done.events["view"] / done.visits > 0.1
