"""Deploy a Triton model repository to a SageMaker real-time endpoint, blue/green by config.

Steps of `deploy`: tar the repository as `model.tar.gz` -> upload to S3 -> create a SageMaker
Model (the sagemaker-tritonserver image, `SAGEMAKER_TRITON_DEFAULT_MODEL_NAME`) -> create a new
EndpointConfig for this version -> create the endpoint, or point the existing one at the new
config -> wait for InService -> smoke test with `invoke_endpoint` -> register Application Auto
Scaling (target tracking on SageMakerVariantInvocationsPerInstance). When the wait or the smoke
test fails the endpoint is pointed back at the config it had before (or deleted when it is new)
and `DeployFailed` is raised.

Emulators: moto (used by the tests through `endpoint_url`) does not implement UpdateEndpoint; it
answers HTTP 500 with an HTML page (botocore reports error code "500"), or raises
NotImplementedError in-process. That case, and only that one, is detected explicitly and the
switch falls back to delete + create of the endpoint with the new config, logged as a warning.
On real AWS an UpdateEndpoint failure is raised, never turned into a delete (that would drop
traffic). moto's sagemaker-runtime answers `invoke_endpoint` with canned bodies (b"body" unless
results are queued at /moto-api/static/sagemaker/endpoint-results), so the smoke check is a
function of the response body and fails closed on anything that is not a valid Triton reply.
"""

from __future__ import annotations

import json
import logging
import math
import re
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError

from serving.errors import ServingError

logger = logging.getLogger(__name__)

# Accounts that publish the official sagemaker-tritonserver image, per region (AWS samples).
TRITON_IMAGE_ACCOUNTS: dict[str, str] = {
    "us-east-1": "785573368785",
    "us-east-2": "007439368137",
    "us-west-1": "710691900526",
    "us-west-2": "301217895009",
    "eu-west-1": "802834080501",
    "eu-west-2": "205493899709",
    "eu-west-3": "254080097072",
    "eu-north-1": "601324751636",
    "eu-south-1": "966458181534",
    "eu-central-1": "746233611703",
    "ap-east-1": "110948597952",
    "ap-south-1": "763008648453",
    "ap-northeast-1": "941853720454",
    "ap-northeast-2": "151534178276",
    "ap-southeast-1": "324986816169",
    "ap-southeast-2": "355873309152",
    "cn-northwest-1": "474822919863",
    "cn-north-1": "472730292857",
    "sa-east-1": "756306329178",
    "ca-central-1": "464438896020",
    "me-south-1": "836785723513",
    "af-south-1": "774647643957",
}
DEFAULT_TRITON_TAG = "24.09-py3"
SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
_FAILED_STATES = {"Failed", "OutOfService", "RollingBack"}
_NAME_MAX = 63  # SageMaker resource names: [a-zA-Z0-9](-*[a-zA-Z0-9])*, at most 63 chars


class SageMakerError(ServingError):
    """Base class of the SageMaker deploy errors."""


class SageMakerNotConfigured(SageMakerError):
    """The endpoint, bucket or role is not set."""


class DeployFailed(SageMakerError):
    """The endpoint did not become healthy; `rolled_back_to` says what it serves now."""

    def __init__(self, message: str, rolled_back_to: str | None) -> None:
        super().__init__(message)
        self.rolled_back_to = rolled_back_to


def default_triton_image(region: str, tag: str = DEFAULT_TRITON_TAG) -> str:
    """URI of the official SageMaker Triton image in `region`."""
    account = TRITON_IMAGE_ACCOUNTS.get(region)
    if account is None:
        raise SageMakerNotConfigured(
            f"no default Triton image for region {region}; set RECSYS_SAGEMAKER_IMAGE_URI"
        )
    domain = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"{account}.dkr.ecr.{region}.{domain}/sagemaker-tritonserver:{tag}"


@dataclass(frozen=True)
class SageMakerConfig:
    """Where and how to deploy; `endpoint_url` points boto3 at an emulator (moto) in tests."""

    region: str
    bucket: str
    role_arn: str
    endpoint_name: str
    image_uri: str = ""  # "" = default_triton_image(region)
    instance_type: str = "ml.g4dn.xlarge"
    instance_count: int = 1
    endpoint_url: str | None = None
    triton_model_name: str = "dlrm"
    s3_prefix: str = "recsys/triton"
    variant_name: str = "AllTraffic"
    autoscaling_min: int = 1
    autoscaling_max: int = 4
    target_invocations_per_instance: float = 200.0  # per minute, SageMaker's metric unit
    scale_in_cooldown_s: int = 300
    scale_out_cooldown_s: int = 60
    wait_timeout_s: float = 1800.0  # real endpoints take 5-15 min to come up
    poll_interval_s: float = 15.0
    tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> "SageMakerConfig":
        """Build from `settings.Settings` (its aws_* and sagemaker_* fields)."""
        values = dict(
            region=settings.aws_region,
            bucket=settings.sagemaker_bucket,
            role_arn=settings.sagemaker_role_arn,
            endpoint_name=settings.sagemaker_endpoint_name,
            image_uri=settings.sagemaker_image_uri,
            instance_type=settings.sagemaker_instance_type,
            endpoint_url=settings.aws_endpoint_url or None,
            triton_model_name=settings.triton_model_name,
        )
        values.update(overrides)
        return cls(**values)

    def require(self) -> None:
        missing = [
            env
            for env, value in (
                ("RECSYS_SAGEMAKER_ENDPOINT", self.endpoint_name),
                ("RECSYS_SAGEMAKER_BUCKET", self.bucket),
                ("RECSYS_SAGEMAKER_ROLE_ARN", self.role_arn),
            )
            if not value
        ]
        if missing:
            raise SageMakerNotConfigured(
                f"SageMaker deploy is not configured: set {', '.join(missing)} (and "
                f"AWS_ENDPOINT_URL to use an emulator such as moto, AWS_DEFAULT_REGION for the "
                f"region), or use RECSYS_DEPLOY_TARGET=local"
            )

    @property
    def image(self) -> str:
        return self.image_uri or default_triton_image(self.region)

    @property
    def resource_id(self) -> str:
        return f"endpoint/{self.endpoint_name}/variant/{self.variant_name}"


@dataclass(frozen=True)
class DeployResult:
    """What now serves: the endpoint, its config for this version, and how the switch was done."""

    endpoint_name: str
    endpoint_config_name: str
    model_name: str
    model_data_url: str
    version: str
    previous_endpoint_config: str | None
    switch: str  # "create", "update" or "recreate" (delete + create, emulators only)
    smoke_response: str


# ---------------------------------------------------------------- smoke test helpers


def triton_request(dense: list[list[float]], sparse: list[list[int]]) -> bytes:
    """KServe v2 JSON body for the `dlrm` model: dense (B, n_dense) FP32, sparse (B, n_sparse)."""
    body = {
        "inputs": [
            {"name": "dense", "shape": [len(dense), len(dense[0])], "datatype": "FP32",
             "data": [float(x) for row in dense for x in row]},
            {"name": "sparse", "shape": [len(sparse), len(sparse[0])], "datatype": "INT64",
             "data": [int(x) for row in sparse for x in row]},
        ],
        "outputs": [{"name": "score"}],
    }
    return json.dumps(body).encode()


def schema_smoke_request(schema_path: Path, rows: int = 2) -> Callable[[], bytes]:
    """A request builder for `rows` rows shaped by schema.json: dense zeros, sparse index 0
    (missing/OOV, valid in every table), so it scores under any fitted workflow."""
    try:
        schema = json.loads(Path(schema_path).read_text())
        n_dense, n_sparse = len(schema["continuous"]), len(schema["categorical"])
    except (OSError, ValueError, KeyError) as exc:
        raise SageMakerError(
            f"cannot build the smoke request from {schema_path}: {exc}; pass build_request= or "
            f"deploy a bundle's triton_repo (schema.json sits next to it)"
        ) from exc
    return lambda: triton_request([[0.0] * n_dense] * rows, [[0] * n_sparse] * rows)


def triton_scores_ok(body: bytes) -> bool:
    """True when `body` is a KServe v2 reply whose `score` output holds probabilities."""
    try:
        reply = json.loads(body)
        outputs = {o["name"]: o for o in reply["outputs"]}
        scores = outputs["score"]["data"]
    except (ValueError, KeyError, TypeError):
        return False
    return bool(scores) and all(
        isinstance(s, (int, float)) and math.isfinite(s) and 0.0 <= s <= 1.0 for s in scores
    )


# ---------------------------------------------------------------- AWS steps


def _clients(config: SageMakerConfig) -> dict[str, Any]:
    session = boto3.session.Session(region_name=config.region)
    return {
        name: session.client(name, endpoint_url=config.endpoint_url)
        for name in ("s3", "sagemaker", "sagemaker-runtime", "application-autoscaling")
    }


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9]+", "-", text).strip("-") or "x"


def resource_name(endpoint: str, version: str, stamp: str) -> str:
    """`<endpoint>-v<version>-<stamp>` cut to SageMaker's 63 characters, endpoint part first."""
    suffix = f"-v{_slug(version)}-{stamp}"
    return _slug(endpoint)[: _NAME_MAX - len(suffix)].rstrip("-") + suffix


def package_repository(repo_dir: Path, out: Path) -> Path:
    """tar.gz of the repository's model directories at the archive root, as Triton expects."""
    repo_dir = Path(repo_dir)
    models = sorted(p for p in repo_dir.iterdir() if p.is_dir())
    if not any((m / "config.pbtxt").is_file() for m in models):
        raise SageMakerError(
            f"{repo_dir} is not a Triton model repository (no <model>/config.pbtxt); build it "
            f"with serving.triton_repo first"
        )
    with tarfile.open(out, "w:gz") as tar:
        for model in models:
            tar.add(model, arcname=model.name)
    return out


def _current_config(sm: Any, endpoint: str) -> str | None:
    try:
        return sm.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"]
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "ValidationException":  # "Could not find endpoint"
            return None
        raise


def _is_not_implemented(exc: Exception) -> bool:
    if isinstance(exc, NotImplementedError):
        return True
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        return code in {"NotImplemented", "NotImplementedError", "500"}
    return False


def _wait_until_gone(sm: Any, config: SageMakerConfig) -> None:
    deadline = time.monotonic() + config.wait_timeout_s
    while _current_config(sm, config.endpoint_name) is not None:
        if time.monotonic() > deadline:
            raise SageMakerError(f"endpoint {config.endpoint_name} was not deleted in time")
        time.sleep(config.poll_interval_s)


def _switch(sm: Any, config: SageMakerConfig, endpoint_config: str) -> str:
    """Point the existing endpoint at `endpoint_config`; returns "update" or "recreate"."""
    try:
        sm.update_endpoint(EndpointName=config.endpoint_name, EndpointConfigName=endpoint_config)
        return "update"
    except (ClientError, NotImplementedError) as exc:
        if not _is_not_implemented(exc):
            raise
        logger.warning(
            "UpdateEndpoint is not implemented by %s (%s); falling back to delete + create of "
            "%s with %s", config.endpoint_url or "this AWS endpoint", exc, config.endpoint_name,
            endpoint_config,
        )
    sm.delete_endpoint(EndpointName=config.endpoint_name)
    _wait_until_gone(sm, config)
    sm.create_endpoint(EndpointName=config.endpoint_name, EndpointConfigName=endpoint_config)
    return "recreate"


def wait_in_service(sm: Any, config: SageMakerConfig) -> None:
    """Poll DescribeEndpoint until InService; raise on a failed state or after the timeout."""
    deadline = time.monotonic() + config.wait_timeout_s
    while True:
        described = sm.describe_endpoint(EndpointName=config.endpoint_name)
        status = described["EndpointStatus"]
        if status == "InService":
            return
        if status in _FAILED_STATES:
            raise SageMakerError(
                f"endpoint {config.endpoint_name} is {status}: "
                f"{described.get('FailureReason', 'no reason given')}"
            )
        if time.monotonic() > deadline:
            raise SageMakerError(
                f"endpoint {config.endpoint_name} still {status} after {config.wait_timeout_s}s"
            )
        time.sleep(config.poll_interval_s)


def _smoke_test(
    runtime: Any, config: SageMakerConfig, build_request: Callable[[], bytes],
    check: Callable[[bytes], bool],
) -> str:
    reply = runtime.invoke_endpoint(
        EndpointName=config.endpoint_name, ContentType="application/json", Body=build_request()
    )
    body = reply["Body"].read()
    if not check(body):
        raise SageMakerError(
            f"smoke test of {config.endpoint_name} failed: unexpected reply {body[:200]!r}"
        )
    return body.decode(errors="replace")


def _deregister_autoscaling(autoscaling: Any, config: SageMakerConfig) -> None:
    # AWS refuses to update an endpoint whose variant is a registered scalable target.
    try:
        autoscaling.deregister_scalable_target(
            ServiceNamespace="sagemaker", ResourceId=config.resource_id,
            ScalableDimension=SCALABLE_DIMENSION,
        )
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ObjectNotFoundException":
            raise


def register_autoscaling(autoscaling: Any, config: SageMakerConfig) -> None:
    """Scalable target (min..max instances) plus a target-tracking policy on invocations."""
    autoscaling.register_scalable_target(
        ServiceNamespace="sagemaker", ResourceId=config.resource_id,
        ScalableDimension=SCALABLE_DIMENSION, MinCapacity=config.autoscaling_min,
        MaxCapacity=config.autoscaling_max,
    )
    autoscaling.put_scaling_policy(
        PolicyName=f"{config.endpoint_name}-invocations",
        ServiceNamespace="sagemaker", ResourceId=config.resource_id,
        ScalableDimension=SCALABLE_DIMENSION, PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": config.target_invocations_per_instance,
            "PredefinedMetricSpecification": {
                "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"
            },
            "ScaleInCooldown": config.scale_in_cooldown_s,
            "ScaleOutCooldown": config.scale_out_cooldown_s,
        },
    )


def _create_model_and_config(
    sm: Any, config: SageMakerConfig, name: str, model_data_url: str
) -> None:
    tags = [{"Key": k, "Value": v} for k, v in config.tags.items()]
    sm.create_model(
        ModelName=name,
        PrimaryContainer={
            "Image": config.image,
            "ModelDataUrl": model_data_url,
            "Environment": {"SAGEMAKER_TRITON_DEFAULT_MODEL_NAME": config.triton_model_name},
        },
        ExecutionRoleArn=config.role_arn,
        **({"Tags": tags} if tags else {}),
    )
    sm.create_endpoint_config(
        EndpointConfigName=name,
        ProductionVariants=[{
            "VariantName": config.variant_name,
            "ModelName": name,
            "InitialInstanceCount": config.instance_count,
            "InstanceType": config.instance_type,
            "InitialVariantWeight": 1.0,
        }],
        **({"Tags": tags} if tags else {}),
    )


def _roll_back(
    clients: dict[str, Any], config: SageMakerConfig, previous: str | None, cause: Exception
) -> DeployFailed:
    sm = clients["sagemaker"]
    if previous is None:
        logger.error("new endpoint %s failed (%s); deleting it", config.endpoint_name, cause)
        sm.delete_endpoint(EndpointName=config.endpoint_name)
        return DeployFailed(f"{cause}; the new endpoint was deleted", rolled_back_to=None)
    logger.error(
        "deploy to %s failed (%s); rolling back to %s", config.endpoint_name, cause, previous
    )
    _switch(sm, config, previous)
    wait_in_service(sm, config)
    register_autoscaling(clients["application-autoscaling"], config)
    return DeployFailed(f"{cause}; endpoint rolled back to {previous}", rolled_back_to=previous)


def deploy(
    repo_dir: Path,
    version: str,
    config: SageMakerConfig,
    build_request: Callable[[], bytes] | None = None,
    check_response: Callable[[bytes], bool] = triton_scores_ok,
) -> DeployResult:
    """Deploy the Triton repository `repo_dir` as model `version`; see the module docstring.

    build_request: body of the smoke-test request; default `schema_smoke_request` on the
    bundle's schema.json (`repo_dir/../schema.json`, the serving bundle layout).
    check_response: True when the endpoint's reply is acceptable (default `triton_scores_ok`).
    Raises `SageMakerNotConfigured` before touching AWS, `DeployFailed` after rolling back.
    """
    config.require()
    if build_request is None:
        build_request = schema_smoke_request(Path(repo_dir).parent / "schema.json")
    clients = _clients(config)
    sm = clients["sagemaker"]
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S%f")[:-3]
    name = resource_name(config.endpoint_name, version, stamp)
    key = f"{config.s3_prefix.strip('/')}/{config.endpoint_name}/{name}/model.tar.gz"

    with tempfile.TemporaryDirectory() as tmp:
        archive = package_repository(Path(repo_dir), Path(tmp) / "model.tar.gz")
        clients["s3"].upload_file(str(archive), config.bucket, key)
    model_data_url = f"s3://{config.bucket}/{key}"
    logger.info("uploaded %s to %s", repo_dir, model_data_url)

    _create_model_and_config(sm, config, name, model_data_url)
    previous = _current_config(sm, config.endpoint_name)
    if previous is None:
        sm.create_endpoint(EndpointName=config.endpoint_name, EndpointConfigName=name)
        switch = "create"
    else:
        _deregister_autoscaling(clients["application-autoscaling"], config)
        try:
            switch = _switch(sm, config, name)
        except ClientError as exc:
            # The endpoint still serves `previous`; give it its scaling back before failing.
            register_autoscaling(clients["application-autoscaling"], config)
            raise DeployFailed(
                f"could not point {config.endpoint_name} at {name}: {exc}", rolled_back_to=previous
            ) from exc
    logger.info("endpoint %s -> config %s (%s)", config.endpoint_name, name, switch)

    try:
        wait_in_service(sm, config)
        smoke = _smoke_test(clients["sagemaker-runtime"], config, build_request, check_response)
    except (SageMakerError, ClientError) as exc:
        raise _roll_back(clients, config, previous, exc) from exc
    register_autoscaling(clients["application-autoscaling"], config)
    logger.info("endpoint %s serves version %s (config %s)", config.endpoint_name, version, name)
    return DeployResult(
        endpoint_name=config.endpoint_name, endpoint_config_name=name, model_name=name,
        model_data_url=model_data_url, version=version, previous_endpoint_config=previous,
        switch=switch, smoke_response=smoke,
    )
