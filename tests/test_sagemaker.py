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
    SageMakerError,
    SageMakerNotConfigured,
    SmokeCheck,
    deploy,
    resource_name,
    schema_smoke_request,
    sequential_request,
    sequential_scores_ok,
    triton_request,
    triton_scores_ok,
)

REGION = "us-east-1"
BUCKET = "recsys-models"
GOOD_REPLY = {"model_name": "dlrm", "outputs": [
    {"name": "score", "datatype": "FP32", "shape": [2, 1], "data": [0.25, 0.75]}]}
GOOD_SEQUENTIAL_REPLY = {"model_name": "sequential", "outputs": [
    {"name": "scores", "datatype": "FP32", "shape": [2, 3], "data": [1.5, -0.25, 0.0, 2.0, 0.5, -3.0]}]}
SCHEMA = {"categorical": ["user_id", "product_id", "brand"], "continuous": ["price"]}
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
    # A distinct body per call: moto caches each (endpoint, TargetModel, body)'s reply.
    n = next(_bodies)
    return triton_request([[float(n), 0.0, 1.0]] * 2, [[0, 1], [1, 0]])


def sequential_smoke_request() -> bytes:
    n = next(_bodies)
    body = json.loads(sequential_request())
    body["inputs"][0]["data"] = [n + 1, n + 1]  # distinct item tokens, same shape
    return json.dumps(body).encode()


RANKER_ONLY = {"dlrm": SmokeCheck(smoke_request, triton_scores_ok)}
BOTH = RANKER_ONLY | {"sequential": SmokeCheck(sequential_smoke_request, sequential_scores_ok)}


def s3_keys(aws: str) -> list[str]:
    return sorted(o["Key"] for o in client(aws, "s3").list_objects_v2(Bucket=BUCKET).get("Contents", []))


def archive_names(aws: str, key: str, tmp_path: Path) -> list[str]:
    local = tmp_path / key.replace("/", "_")
    client(aws, "s3").download_file(BUCKET, key, str(local))
    with tarfile.open(local) as tar:
        return sorted(tar.getnames())


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    model = tmp_path / "triton_repo" / "dlrm"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text('name: "dlrm"\nbackend: "onnxruntime"\n')
    (model / "1" / "model.onnx").write_bytes(b"onnx-bytes")
    return model.parent


@pytest.fixture()
def bundle_repo(repo: Path) -> Path:
    """A bundle's repository shipping both models, with schema.json beside it."""
    sequential = repo / "sequential"
    (sequential / "1").mkdir(parents=True)
    (sequential / "config.pbtxt").write_text('name: "sequential"\nplatform: "onnxruntime_onnx"\n')
    (sequential / "1" / "model.onnx").write_bytes(b"sequential-onnx-bytes")
    (repo.parent / "schema.json").write_text(json.dumps(SCHEMA))
    return repo


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
    result = deploy(repo, "7", config(aws), RANKER_ONLY)

    assert result.switch == "create" and result.previous_endpoint_config is None
    prefix = result.model_data_url.removeprefix(f"s3://{BUCKET}/")
    assert prefix.endswith(f"/{result.model_name}/")
    assert s3_keys(aws) == [prefix + "dlrm.tar.gz"]
    assert archive_names(aws, prefix + "dlrm.tar.gz", tmp_path) == [
        "dlrm", "dlrm/1", "dlrm/1/model.onnx", "dlrm/config.pbtxt"]
    sm = client(aws, "sagemaker")
    container = sm.describe_model(ModelName=result.model_name)["PrimaryContainer"]
    assert container == {
        "Image": "785573368785.dkr.ecr.us-east-1.amazonaws.com/sagemaker-tritonserver:24.09-py3",
        "Mode": "MultiModel", "ModelDataUrl": result.model_data_url}
    variant = sm.describe_endpoint_config(EndpointConfigName=result.endpoint_config_name)[
        "ProductionVariants"][0]
    assert variant["InstanceType"] == "ml.g4dn.xlarge" and variant["ModelName"] == result.model_name
    endpoint = sm.describe_endpoint(EndpointName="recsys-ranker")
    assert endpoint["EndpointStatus"] == "InService"
    assert endpoint["EndpointConfigName"] == result.endpoint_config_name
    assert result.target_models == {"dlrm": "dlrm.tar.gz"}
    assert {m: json.loads(r) for m, r in result.smoke_responses.items()} == {"dlrm": GOOD_REPLY}


def test_second_deploy_creates_a_new_config_and_points_the_endpoint_at_it(
    aws: str, repo: Path
) -> None:
    queue_replies(aws, json.dumps(GOOD_REPLY).encode(), json.dumps(GOOD_REPLY).encode())
    first = deploy(repo, "7", config(aws), RANKER_ONLY)
    second = deploy(repo, "8", config(aws), RANKER_ONLY)

    assert second.endpoint_config_name != first.endpoint_config_name
    assert "-v8-" in second.endpoint_config_name
    assert second.previous_endpoint_config == first.endpoint_config_name
    assert second.switch == "recreate"  # moto has no UpdateEndpoint
    assert second.model_data_url != first.model_data_url  # each version's archives under their own prefix
    sm = client(aws, "sagemaker")
    assert sm.describe_endpoint(EndpointName="recsys-ranker")["EndpointConfigName"] == \
        second.endpoint_config_name
    configs = {c["EndpointConfigName"] for c in sm.list_endpoint_configs()["EndpointConfigs"]}
    assert {first.endpoint_config_name, second.endpoint_config_name} <= configs


def test_autoscaling_target_and_invocation_policy_are_registered(aws: str, repo: Path) -> None:
    queue_replies(aws, json.dumps(GOOD_REPLY).encode())
    deploy(repo, "7", config(aws, target_invocations_per_instance=150.0), RANKER_ONLY)

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
    first = deploy(repo, "7", config(aws), RANKER_ONLY)
    queue_replies(aws, b'{"error": "model dlrm is not ready"}')

    with pytest.raises(DeployFailed, match="smoke test of model dlrm") as failure:
        deploy(repo, "8", config(aws), RANKER_ONLY)

    assert failure.value.rolled_back_to == first.endpoint_config_name
    endpoint = client(aws, "sagemaker").describe_endpoint(EndpointName="recsys-ranker")
    assert endpoint["EndpointConfigName"] == first.endpoint_config_name
    assert endpoint["EndpointStatus"] == "InService"


def test_failed_smoke_test_of_a_new_endpoint_deletes_it(aws: str, repo: Path) -> None:
    # Nothing queued: moto answers b"body", which is no Triton reply.
    with pytest.raises(DeployFailed) as failure:
        deploy(repo, "7", config(aws), RANKER_ONLY)
    assert failure.value.rolled_back_to is None
    assert client(aws, "sagemaker").list_endpoints()["Endpoints"] == []


def test_each_model_is_its_own_archive_under_the_prefix_of_the_version(
    aws: str, bundle_repo: Path, tmp_path: Path
) -> None:
    queue_replies(aws, json.dumps(GOOD_REPLY).encode(), json.dumps(GOOD_SEQUENTIAL_REPLY).encode())
    result = deploy(bundle_repo, "7", config(aws), BOTH)

    prefix = result.model_data_url.removeprefix(f"s3://{BUCKET}/")
    assert s3_keys(aws) == [prefix + "dlrm.tar.gz", prefix + "sequential.tar.gz"]
    assert archive_names(aws, prefix + "dlrm.tar.gz", tmp_path) == [
        "dlrm", "dlrm/1", "dlrm/1/model.onnx", "dlrm/config.pbtxt"]
    assert archive_names(aws, prefix + "sequential.tar.gz", tmp_path) == [
        "sequential", "sequential/1", "sequential/1/model.onnx", "sequential/config.pbtxt"]
    sm = client(aws, "sagemaker")
    container = sm.describe_model(ModelName=result.model_name)["PrimaryContainer"]
    assert (container["Mode"], container["ModelDataUrl"]) == ("MultiModel", result.model_data_url)
    assert "Environment" not in container  # no default model: every invocation names its target
    variants = sm.describe_endpoint_config(EndpointConfigName=result.endpoint_config_name)[
        "ProductionVariants"]
    assert [v["ModelName"] for v in variants] == [result.model_name]
    assert result.target_models == {"dlrm": "dlrm.tar.gz", "sequential": "sequential.tar.gz"}
    assert {m: json.loads(r) for m, r in result.smoke_responses.items()} == {
        "dlrm": GOOD_REPLY, "sequential": GOOD_SEQUENTIAL_REPLY}


def test_default_smoke_requests_reach_each_model_with_its_own_body(aws: str, bundle_repo: Path) -> None:
    ranker_body = schema_smoke_request(bundle_repo.parent / "schema.json")()
    sequential_body = sequential_request()
    ranker = {i["name"]: (i["shape"], i["datatype"]) for i in json.loads(ranker_body)["inputs"]}
    assert ranker == {"dense": ([2, 1], "FP32"), "sparse": ([2, 3], "INT64")}
    sequential = {i["name"]: (i["shape"], i["datatype"], i["data"]) for i in json.loads(sequential_body)["inputs"]}
    assert sequential == {"items": ([2, 1], "INT64", [1, 1]), "kinds": ([2, 1], "INT64", [1, 1])}
    # moto answers each new (endpoint, TargetModel, body) from the queue and then repeats itself: bind
    # the good replies to exactly these requests, so the deploy passes only if it sends them.
    queue_replies(aws, json.dumps(GOOD_REPLY).encode(), json.dumps(GOOD_SEQUENTIAL_REPLY).encode())
    runtime = client(aws, "sagemaker-runtime")
    for target, body in (("dlrm.tar.gz", ranker_body), ("sequential.tar.gz", sequential_body)):
        runtime.invoke_endpoint(EndpointName="recsys-ranker", TargetModel=target,
                                ContentType="application/json", Body=body)

    result = deploy(bundle_repo, "9", config(aws))

    assert {m: json.loads(r) for m, r in result.smoke_responses.items()} == {
        "dlrm": GOOD_REPLY, "sequential": GOOD_SEQUENTIAL_REPLY}


def test_a_failed_sequential_smoke_test_rolls_the_whole_version_back(
    aws: str, bundle_repo: Path, tmp_path: Path
) -> None:
    queue_replies(aws, json.dumps(GOOD_REPLY).encode(), json.dumps(GOOD_SEQUENTIAL_REPLY).encode())
    first = deploy(bundle_repo, "7", config(aws), BOTH)
    not_finite = {"outputs": [{"name": "scores", "shape": [2, 1], "data": [0.5, "NaN"]}]}
    queue_replies(aws, json.dumps(GOOD_REPLY).encode(), json.dumps(not_finite).encode())

    with pytest.raises(DeployFailed, match="smoke test of model sequential") as failure:
        deploy(bundle_repo, "8", config(aws), BOTH)

    assert failure.value.rolled_back_to == first.endpoint_config_name
    sm = client(aws, "sagemaker")
    assert sm.describe_endpoint(EndpointName="recsys-ranker")["EndpointConfigName"] == \
        first.endpoint_config_name
    # what the endpoint serves again is version 7's prefix, whose archives are still there
    model = sm.describe_endpoint_config(EndpointConfigName=first.endpoint_config_name)[
        "ProductionVariants"][0]["ModelName"]
    assert sm.describe_model(ModelName=model)["PrimaryContainer"]["ModelDataUrl"] == first.model_data_url
    prefix = first.model_data_url.removeprefix(f"s3://{BUCKET}/")
    assert {prefix + "dlrm.tar.gz", prefix + "sequential.tar.gz"} <= set(s3_keys(aws))


def test_a_shipped_model_without_a_smoke_check_is_refused_before_anything_is_uploaded(
    aws: str, bundle_repo: Path
) -> None:
    with pytest.raises(SageMakerError, match="sequential"):
        deploy(bundle_repo, "7", config(aws), RANKER_ONLY)
    assert s3_keys(aws) == []
    assert client(aws, "sagemaker").list_models()["Models"] == []


def test_missing_endpoint_bucket_and_role_name_the_env_vars(repo: Path) -> None:
    with pytest.raises(SageMakerNotConfigured) as missing:
        deploy(repo, "7", SageMakerConfig(region=REGION, bucket="", role_arn="", endpoint_name=""),
               RANKER_ONLY)
    for env in ("RECSYS_SAGEMAKER_ENDPOINT", "RECSYS_SAGEMAKER_BUCKET",
                "RECSYS_SAGEMAKER_ROLE_ARN", "AWS_ENDPOINT_URL"):
        assert env in str(missing.value)


def test_smoke_check_accepts_only_probability_scores() -> None:
    assert triton_scores_ok(json.dumps(GOOD_REPLY).encode())
    assert not triton_scores_ok(b"body")
    bad = {"outputs": [{"name": "score", "data": [0.5, 1.7]}]}
    assert not triton_scores_ok(json.dumps(bad).encode())
    assert not triton_scores_ok(json.dumps({"outputs": [{"name": "score", "data": []}]}).encode())


def test_sequential_smoke_check_accepts_only_finite_scores_of_each_row() -> None:
    assert sequential_scores_ok(json.dumps(GOOD_SEQUENTIAL_REPLY).encode())
    assert not sequential_scores_ok(b"body")
    assert not sequential_scores_ok(json.dumps(GOOD_REPLY).encode())  # the ranker's reply
    for shape, data in (([1, 3], [0.0, 1.0, 2.0]), ([2, 3], [0.0] * 5), ([2, 0], []),
                        ([2, 1], [0.5, float("inf")])):
        reply = {"outputs": [{"name": "scores", "shape": shape, "data": data}]}
        assert not sequential_scores_ok(json.dumps(reply).encode()), shape


def test_resource_names_fit_sagemaker_limits() -> None:
    name = resource_name("a" * 80, "12", "20261124154200123")
    assert len(name) <= 63 and name.endswith("-v12-20261124154200123")


def test_the_deploy_stage_puts_both_models_of_a_bundle_on_the_endpoint(
    aws: str, bundle_repo: Path, recsys_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from settings import Settings
    from stages.deploy import deploy as deploy_stage

    for env, value in {"AWS_ENDPOINT_URL": aws, "RECSYS_SAGEMAKER_BUCKET": BUCKET,
                       "RECSYS_SAGEMAKER_ROLE_ARN": "arn:aws:iam::123456789012:role/sm",
                       "RECSYS_SAGEMAKER_ENDPOINT": "recsys-stage"}.items():
        monkeypatch.setenv(env, value)
    queue_replies(aws, json.dumps(GOOD_REPLY).encode(), json.dumps(GOOD_SEQUENTIAL_REPLY).encode())
    packaged = {"version": "3", "bundle": str(bundle_repo.parent), "repo": str(bundle_repo)}

    deployed = deploy_stage(packaged, "sagemaker", Settings.from_env())

    assert deployed == {"version": "3", "target": "sagemaker", "endpoint": "recsys-stage",
                        "target_models": {"dlrm": "dlrm.tar.gz", "sequential": "sequential.tar.gz"}}
    assert [k.rsplit("/", 1)[1] for k in s3_keys(aws)] == ["dlrm.tar.gz", "sequential.tar.gz"]
