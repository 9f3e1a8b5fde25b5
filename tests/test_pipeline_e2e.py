"""End to end through the real parts: Airflow runs both DAGs on a small data set, MLflow holds
the champion, a real Triton serves it, and the API ranks with it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date

import pandas as pd
import pytest

from tests.conftest import REPO, free_port

pytestmark = pytest.mark.integration

RUN_DATE = date(2026, 11, 20)
CORRUPTED = 12


ENDPOINT = "recsys-dlrm"
BUCKET = "recsys-models"


@pytest.fixture(scope="module")
def pipeline_home(tmp_path_factory: pytest.TempPathFactory, moto_url: str):
    """Generate data, run the nightly DAG, then the deploy DAG to both targets (local Triton, and
    SageMaker on a moto server), all with `airflow dags test`; stop Triton after."""
    import boto3
    import requests

    home = tmp_path_factory.mktemp("e2e")
    aws = {
        "AWS_ENDPOINT_URL": moto_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "RECSYS_SAGEMAKER_BUCKET": BUCKET,
        "RECSYS_SAGEMAKER_ROLE_ARN": "arn:aws:iam::123456789012:role/recsys-sagemaker",
        "RECSYS_SAGEMAKER_ENDPOINT": ENDPOINT,
    }
    boto3.client("s3", region_name="us-east-1", endpoint_url=moto_url,
                 aws_access_key_id="testing", aws_secret_access_key="testing").create_bucket(Bucket=BUCKET)
    # moto's runtime answers invoke_endpoint from this queue, in the order of the smoke tests: a valid
    # Triton reply of the ranker, then one of the sequential model (left unused if the bundle has none).
    replies = [{"model_name": "dlrm", "outputs": [{"name": "score", "datatype": "FP32", "shape": [2, 1],
                                                   "data": [0.2, 0.7]}]},
               {"model_name": "sequential", "outputs": [{"name": "scores", "datatype": "FP32",
                                                         "shape": [2, 2], "data": [0.1, -0.3, 0.1, -0.3]}]}]
    requests.post(f"{moto_url}/moto-api/static/sagemaker/endpoint-results", timeout=5,
                  json={"region": "us-east-1", "results": [{"Body": json.dumps(r), "ContentType": "application/json"}
                                                           for r in replies]})
    env = os.environ | aws | {
        "RECSYS_HOME": str(home),
        "RECSYS_WINDOW_DAYS": "6",
        "RECSYS_TRAIN_EPOCHS": "4",
        "RECSYS_TRITON_HTTP_PORT": str(free_port()),
        "RECSYS_TRITON_GRPC_PORT": str(free_port()),
    }
    for name in ("MLFLOW_TRACKING_URI", "RECSYS_DATABASE_URL", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
                 "AIRFLOW__LOGGING__BASE_LOG_FOLDER", "AIRFLOW_HOME"):
        env.pop(name, None)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cli", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=900)

    made = cli("generate", "--events", "80000", "--users", "300", "--products", "1500",
               "--end", RUN_DATE.isoformat(), "--days", "6", "--corrupt", str(CORRUPTED))
    assert made.returncode == 0, made.stderr[-3000:]
    assert cli("airflow", "db", "migrate").returncode == 0
    nightly = cli("airflow", "dags", "test", "nightly_training", RUN_DATE.isoformat(),
                  "-c", json.dumps({"deploy": False}))
    # The gate may keep no champion on data this small (it asks for evidence); the night's version is
    # the challenger either way, and that is what is deployed here.
    deploy = cli("airflow", "dags", "test", "deploy_model", RUN_DATE.isoformat(),
                 "-c", json.dumps({"version": "challenger", "target": "local"}))
    sagemaker = cli("airflow", "dags", "test", "deploy_model", RUN_DATE.isoformat(),
                    "-c", json.dumps({"version": "challenger", "target": "sagemaker"}))
    try:
        yield {"home": home, "env": env, "nightly": nightly, "deploy": deploy, "sagemaker": sagemaker,
               "moto_url": moto_url}
    finally:
        cli("stop")


def _settings(env: dict[str, str]):
    from settings import Settings

    old = dict(os.environ)
    os.environ.update(env)
    try:
        return Settings.from_env()
    finally:
        os.environ.clear()
        os.environ.update(old)


def test_both_dags_succeed_under_airflow(pipeline_home) -> None:
    for name in ("nightly", "deploy", "sagemaker"):
        result = pipeline_home[name]
        assert result.returncode == 0, f"{name} DAG failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"


def test_quarantine_holds_exactly_the_corrupted_rows(pipeline_home) -> None:
    run = pipeline_home["home"] / "runs" / RUN_DATE.isoformat() / "validation"
    report = json.loads((run / "report.json").read_text())
    assert report["n_quarantined"] == CORRUPTED
    assert report["n_in"] == report["n_passed"] + report["n_quarantined"]
    assert len(pd.read_parquet(run / "quarantine" / "events.parquet")) == CORRUPTED


def test_the_night_is_registered_with_its_comparison_and_the_gate_decision(pipeline_home) -> None:
    from mlflow import MlflowClient

    settings = _settings(pipeline_home["env"])
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    challenger = client.get_model_version_by_alias(settings.model_name, "challenger")
    run = client.get_run(challenger.run_id)
    metrics = run.data.metrics
    # the served path and every classic baseline, on the same users, with intervals
    for method in ("served", "popularity", "item_knn", "als", "ease"):
        assert metrics[f"{method}.ndcg_at_10_ci_low"] <= metrics[f"{method}.ndcg_at_10"] \
            <= metrics[f"{method}.ndcg_at_10_ci_high"]
    assert metrics["ndcg_at_10"] == metrics["served.ndcg_at_10"] and metrics["eval_users"] > 0
    assert metrics["oracle.ndcg_at_10"] > 0  # the synthetic shop's planted truth, on the same users
    assert 0.0 <= metrics["retrieval_recall_at_10"] <= 1.0  # the two-tower candidate model
    plots = {a.path for a in client.list_artifacts(challenger.run_id, "eval/plots")}
    assert "eval/plots/ndcg_at_10.png" in plots
    assert {a.path for a in client.list_artifacts(challenger.run_id, "recommender")} >= {
        "recommender/recommender.pkl", "recommender/ranker.pt", "recommender/schema.json"}
    decision = challenger.tags["promotion.decision"]
    assert decision in ("promoted", "rejected") and challenger.tags["promotion.reason"]
    assert float(challenger.tags["promotion.evidence.users"]) == metrics["eval_users"]
    promoted = (decision == "promoted")
    champion_exists = True
    try:
        client.get_model_version_by_alias(settings.model_name, "champion")
    except Exception:  # noqa: BLE001 - MlflowException when the alias is absent
        champion_exists = False
    assert champion_exists == promoted
    assert run.data.tags["lineage.data_hash"]
    assert run.data.tags["lineage.eval_set_hash"]


def test_triton_serves_the_champion_and_the_api_ranks_with_it(pipeline_home) -> None:
    from api import create_app

    settings = _settings(pipeline_home["env"])
    validated = pd.read_parquet(
        pipeline_home["home"] / "runs" / RUN_DATE.isoformat() / "validation" / "valid" / "events.parquet"
    )
    old = dict(os.environ)
    os.environ.update(pipeline_home["env"])
    try:
        app = create_app({"TESTING": True})
        from api.seed import seed_from_events

        seed_from_events(settings.database_url, pipeline_home["home"] / "runs" / RUN_DATE.isoformat()
                         / "validation" / "valid" / "events.parquet")
        client = app.test_client()
        purchases = validated[validated.event_type == "purchase"]
        customer = int(purchases.user_id.value_counts().index[0])
        bought = set(purchases.loc[purchases.user_id == customer, "product_id"].astype(int))
        response = client.get(f"/customers/{customer}/recommendations?k=10")
        seen = set(validated.loc[validated.user_id == customer, "product_id"].astype(int))
    finally:
        os.environ.clear()
        os.environ.update(old)
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    ids = [item["product_id"] for item in body["items"]]
    assert body["ranker"] == "triton" and body["fallback"] is False
    assert len(ids) == 10 == len(set(ids))
    assert not bought & set(ids) and not seen & set(ids)  # the default exclusion: seen products
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True)


def test_sagemaker_target_serves_the_champion_and_is_recorded_in_mlflow(pipeline_home) -> None:
    import boto3
    from mlflow import MlflowClient

    settings = _settings(pipeline_home["env"])
    sm = boto3.client("sagemaker", region_name="us-east-1", endpoint_url=pipeline_home["moto_url"],
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    endpoint = sm.describe_endpoint(EndpointName=ENDPOINT)
    assert endpoint["EndpointStatus"] == "InService"
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    champion = client.get_model_version_by_alias(settings.model_name, "challenger")
    assert champion.tags["deployment.sagemaker.endpoint"] == ENDPOINT
    assert champion.tags["deployment.local.endpoint"].endswith(settings.triton_http_port.__str__())
    config = sm.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    model = sm.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])
    container = model["PrimaryContainer"]
    assert container["Mode"] == "MultiModel"
    prefix = container["ModelDataUrl"]
    assert prefix.startswith(f"s3://{BUCKET}/") and prefix.endswith("/")
    # one archive per model of the deployed bundle: the ranker, and the sequential model when it ships one
    bundle = json.loads((settings.serving_dir / str(champion.version) / "deployment.json").read_text())
    expected = sorted(["dlrm.tar.gz"] + (["sequential.tar.gz"] if bundle.get("sequential_model") else []))
    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=pipeline_home["moto_url"],
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix.removeprefix(f"s3://{BUCKET}/"))["Contents"]
    assert sorted(o["Key"].rsplit("/", 1)[1] for o in listed) == expected
