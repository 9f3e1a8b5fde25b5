"""SageMaker deploy against a real moto server process (S3, SageMaker, runtime, autoscaling)."""

from __future__ import annotations

import json
import tarfile
from itertools import count
from pathlib import Path

import boto3
import pytest
import requests

from serving.sagemaker import (
    DeployFailed,
    SageMakerConfig,
    SageMakerNotConfigured,
    deploy,
    resource_name,
    schema_smoke_request,
    triton_request,
    triton_scores_ok,
)

REGION = "us-east-1"
BUCKET = "recsys-models"
GOOD_REPLY = {"model_name": "dlrm", "outputs": [
    {"name": "score", "datatype": "FP32", "shape": [2, 1], "data": [0.25, 0.75]}]}
_bodies = count()


@pytest.fixture()
def aws(moto_url: str, monkeypatch) -> str:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    requests.post(f"{moto_url}/moto-api/reset", timeout=5).raise_for_status()
    boto3.client("s3", region_name=REGION, endpoint_url=moto_url).create_bucket(Bucket=BUCKET)
    return moto_url


def client(aws: str, name: str):
    return boto3.client(name, region_name=REGION, endpoint_url=aws)


def queue_replies(aws: str, *bodies: bytes) -> None:
    """moto's sagemaker-runtime hands these out, in order, to new (endpoint, body) requests."""
    results = [{"Body": b.decode(), "ContentType": "application/json"} for b in bodies]
    requests.post(f"{aws}/moto-api/static/sagemaker/endpoint-results",
                  json={"region": REGION, "results": results}, timeout=5).raise_for_status()


def smoke_request() -> bytes:
    # A distinct body per call: moto caches each (endpoint, body) pair's reply.
    n = next(_bodies)
    return triton_request([[float(n), 0.0, 1.0]] * 2, [[0, 1], [1, 0]])


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    model = tmp_path / "triton_repo" / "dlrm"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text('name: "dlrm"\nbackend: "onnxruntime"\n')
    (model / "1" / "model.onnx").write_bytes(b"onnx-bytes")
    return model.parent


def config(aws: str, **overrides) -> SageMakerConfig:
    values = dict(region=REGION, bucket=BUCKET, role_arn="arn:aws:iam::123456789012:role/sm",
                  endpoint_name="recsys-ranker", endpoint_url=aws, instance_type="ml.g4dn.xlarge",
                  autoscaling_min=1, autoscaling_max=3, poll_interval_s=0.05, wait_timeout_s=10)
    values.update(overrides)
    return SageMakerConfig(**values)


def test_first_deploy_uploads_archive_and_creates_model_config_and_endpoint(
    aws: str, repo: Path, tmp_path: Path
) -> None:
    queue_replies(aws, json.dumps(GOOD_REPLY).encode())
    result = deploy(repo, "7", config(aws), smoke_request)

    assert result.switch == "create" and result.previous_endpoint_config is None
    key = result.model_data_url.removeprefix(f"s3://{BUCKET}/")
    client(aws, "s3").download_file(BUCKET, key, str(tmp_path / "model.tar.gz"))
    with tarfile.open(tmp_path / "model.tar.gz") as tar:
        assert sorted(tar.getnames()) == ["dlrm", "dlrm/1", "dlrm/1/model.onnx", "dlrm/config.pbtxt"]
    sm = client(aws, "sagemaker")
    container = sm.describe_model(ModelName=result.model_name)["PrimaryContainer"]
    assert container["Image"] == "785573368785.dkr.ecr.us-east-1.amazonaws.com/sagemaker-tritonserver:24.09-py3"
    assert container["ModelDataUrl"] == result.model_data_url
    assert container["Environment"] == {"SAGEMAKER_TRITON_DEFAULT_MODEL_NAME": "dlrm"}
    variant = sm.describe_endpoint_config(EndpointConfigName=result.endpoint_config_name)[
        "ProductionVariants"][0]
    assert variant["InstanceType"] == "ml.g4dn.xlarge" and variant["ModelName"] == result.model_name
    endpoint = sm.describe_endpoint(EndpointName="recsys-ranker")
    assert endpoint["EndpointStatus"] == "InService"
    assert endpoint["EndpointConfigName"] == result.endpoint_config_name
    assert json.loads(result.smoke_response) == GOOD_REPLY


def test_second_deploy_creates_a_new_config_and_points_the_endpoint_at_it(
    aws: str, repo: Path
) -> None:
    queue_replies(aws, json.dumps(GOOD_REPLY).encode(), json.dumps(GOOD_REPLY).encode())
    first = deploy(repo, "7", config(aws), smoke_request)
    second = deploy(repo, "8", config(aws), smoke_request)

    assert second.endpoint_config_name != first.endpoint_config_name
    assert "-v8-" in second.endpoint_config_name
    assert second.previous_endpoint_config == first.endpoint_config_name
    assert second.switch == "recreate"  # moto has no UpdateEndpoint
    sm = client(aws, "sagemaker")
    assert sm.describe_endpoint(EndpointName="recsys-ranker")["EndpointConfigName"] == \
        second.endpoint_config_name
    configs = {c["EndpointConfigName"] for c in sm.list_endpoint_configs()["EndpointConfigs"]}
    assert {first.endpoint_config_name, second.endpoint_config_name} <= configs


def test_autoscaling_target_and_invocation_policy_are_registered(aws: str, repo: Path) -> None:
    queue_replies(aws, json.dumps(GOOD_REPLY).encode())
    deploy(repo, "7", config(aws, target_invocations_per_instance=150.0), smoke_request)

    autoscaling = client(aws, "application-autoscaling")
    target = autoscaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    assert [(t["ResourceId"], t["MinCapacity"], t["MaxCapacity"]) for t in target] == [
        ("endpoint/recsys-ranker/variant/AllTraffic", 1, 3)]
    policy = autoscaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"][0]
    tracking = policy["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["TargetValue"] == 150.0
    assert tracking["PredefinedMetricSpecification"]["PredefinedMetricType"] == \
        "SageMakerVariantInvocationsPerInstance"


def test_failed_smoke_test_rolls_back_to_the_previous_config(aws: str, repo: Path) -> None:
    queue_replies(aws, json.dumps(GOOD_REPLY).encode())
    first = deploy(repo, "7", config(aws), smoke_request)
    queue_replies(aws, b'{"error": "model dlrm is not ready"}')

    with pytest.raises(DeployFailed, match="smoke test") as failure:
        deploy(repo, "8", config(aws), smoke_request)

    assert failure.value.rolled_back_to == first.endpoint_config_name
    endpoint = client(aws, "sagemaker").describe_endpoint(EndpointName="recsys-ranker")
    assert endpoint["EndpointConfigName"] == first.endpoint_config_name
    assert endpoint["EndpointStatus"] == "InService"


def test_failed_smoke_test_of_a_new_endpoint_deletes_it(aws: str, repo: Path) -> None:
    # Nothing queued: moto answers b"body", which is no Triton reply.
    with pytest.raises(DeployFailed) as failure:
        deploy(repo, "7", config(aws), smoke_request)
    assert failure.value.rolled_back_to is None
    assert client(aws, "sagemaker").list_endpoints()["Endpoints"] == []


def test_default_smoke_request_is_shaped_by_the_bundle_schema(aws: str, repo: Path) -> None:
    schema = {"categorical": ["user_id", "product_id", "brand"], "continuous": ["price"]}
    (repo.parent / "schema.json").write_text(json.dumps(schema))
    queue_replies(aws, json.dumps(GOOD_REPLY).encode())
    result = deploy(repo, "9", config(aws, endpoint_name="schema-shaped"))
    assert result.switch == "create"
    request = json.loads(schema_smoke_request(repo.parent / "schema.json")())
    shapes = {i["name"]: (i["shape"], i["datatype"]) for i in request["inputs"]}
    assert shapes == {"dense": ([2, 1], "FP32"), "sparse": ([2, 3], "INT64")}


def test_missing_endpoint_bucket_and_role_name_the_env_vars(repo: Path) -> None:
    with pytest.raises(SageMakerNotConfigured) as missing:
        deploy(repo, "7", SageMakerConfig(region=REGION, bucket="", role_arn="", endpoint_name=""),
               smoke_request)
    for env in ("RECSYS_SAGEMAKER_ENDPOINT", "RECSYS_SAGEMAKER_BUCKET",
                "RECSYS_SAGEMAKER_ROLE_ARN", "AWS_ENDPOINT_URL"):
        assert env in str(missing.value)


def test_smoke_check_accepts_only_probability_scores() -> None:
    assert triton_scores_ok(json.dumps(GOOD_REPLY).encode())
    assert not triton_scores_ok(b"body")
    bad = {"outputs": [{"name": "score", "data": [0.5, 1.7]}]}
    assert not triton_scores_ok(json.dumps(bad).encode())
    assert not triton_scores_ok(json.dumps({"outputs": [{"name": "score", "data": []}]}).encode())


def test_resource_names_fit_sagemaker_limits() -> None:
    name = resource_name("a" * 80, "12", "20261124154200123")
    assert len(name) <= 63 and name.endswith("-v12-20261124154200123")


def test_the_archive_ships_the_sequential_model_beside_the_ranker(aws: str, repo: Path, tmp_path: Path) -> None:
    sequential = repo / "sequential"
    (sequential / "1").mkdir(parents=True)
    (sequential / "config.pbtxt").write_text('name: "sequential"\nplatform: "onnxruntime_onnx"\n')
    (sequential / "1" / "model.onnx").write_bytes(b"sequential-onnx-bytes")
    queue_replies(aws, json.dumps(GOOD_REPLY).encode())
    result = deploy(repo, "7", config(aws), smoke_request)
    key = result.model_data_url.removeprefix(f"s3://{BUCKET}/")
    client(aws, "s3").download_file(BUCKET, key, str(tmp_path / "model.tar.gz"))
    with tarfile.open(tmp_path / "model.tar.gz") as tar:
        assert {"dlrm/1/model.onnx", "dlrm/config.pbtxt", "sequential/1/model.onnx",
                "sequential/config.pbtxt"} <= set(tar.getnames())
    # the endpoint's default model (what an invocation without a target reaches) stays the ranker
    container = client(aws, "sagemaker").describe_model(ModelName=result.model_name)["PrimaryContainer"]
    assert container["Environment"] == {"SAGEMAKER_TRITON_DEFAULT_MODEL_NAME": "dlrm"}
