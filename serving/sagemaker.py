"""Deploy a Triton model repository to a SageMaker real-time endpoint, blue/green by config.

The endpoint is a multi-model endpoint (MME) of the sagemaker-tritonserver image, so it serves every
model of the repository: the ranker (`dlrm`) and, when the bundle ships it, `sequential`. The image in
single-model mode starts Triton with `--load-model=$SAGEMAKER_TRITON_DEFAULT_MODEL_NAME` and routes
every `/invocations` to that one model; an ensemble does not fit either (its inputs share one batch
axis, and the ranker's batch is candidates where the sequential model's is customers). In MME mode
(`Mode="MultiModel"`) the container's `ModelDataUrl` is an S3 prefix, each `<model>.tar.gz` under it
holds one model directory, and `invoke_endpoint(TargetModel="<model>.tar.gz")` reaches that model
(loaded from S3 on its first invocation).

Steps of `deploy`: tar each model directory as `<model>.tar.gz` -> upload them under a prefix of
their own for this version -> create a SageMaker Model (the Triton image, MultiModel mode, that
prefix) -> create a new EndpointConfig for this version -> create the endpoint, or point the
existing one at the new config -> wait for InService -> smoke test every model with
`invoke_endpoint(TargetModel=...)` -> register Application Auto Scaling (target tracking on
SageMakerVariantInvocationsPerInstance). An MME pings "live", not "ready": InService says nothing
about the models, so the smoke tests are what load and check each of them. When the wait or a smoke
test fails the endpoint is pointed back at the config it had before (whose Model still names the
previous version's prefix) or deleted when it is new, and `DeployFailed` is raised.

Emulators: moto (used by the tests through `endpoint_url`) does not implement UpdateEndpoint; it
answers HTTP 500 with an HTML page (botocore reports error code "500"), or raises
NotImplementedError in-process. That case, and only that one, is detected explicitly and the
switch falls back to delete + create of the endpoint with the new config, logged as a warning.
On real AWS an UpdateEndpoint failure is raised, never turned into a delete (that would drop
traffic). moto's sagemaker-runtime answers `invoke_endpoint` with canned bodies (b"body" unless
results are queued at /moto-api/static/sagemaker/endpoint-results; one per new (endpoint,
TargetModel, body)), so each smoke check is a function of the response body and fails closed on
anything that is not a valid Triton reply of that model.
"""

from __future__ import annotations

import json
import logging
import math
import re
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError

from serving.errors import ServingError
from serving.triton_repo import SEQUENTIAL_MODEL

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
    """What now serves: the endpoint, its config for this version, and how the switch was done.

    model_data_url is the S3 prefix of this version's archives (the Model's ModelDataUrl);
    target_models maps each Triton model to the TargetModel that reaches it on the endpoint, and
    smoke_responses each Triton model to the reply of its smoke test.
    """

    endpoint_name: str
    endpoint_config_name: str
    model_name: str
    model_data_url: str
    version: str
    previous_endpoint_config: str | None
    switch: str  # "create", "update" or "recreate" (delete + create, emulators only)
    target_models: dict[str, str]
    smoke_responses: dict[str, str]


@dataclass(frozen=True)
class SmokeCheck:
    """One model's smoke test: the body of the request sent to it, and whether a reply is right."""

    request: Callable[[], bytes]
    accept: Callable[[bytes], bool]


def target_model(model: str) -> str:
    """The TargetModel of a Triton model on the endpoint: its archive's name under the prefix."""
    return f"{model}.tar.gz"


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
            f"cannot build the smoke request from {schema_path}: {exc}; pass checks= or "
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


SEQUENTIAL_SMOKE_ROWS = 2


def sequential_request(rows: int = SEQUENTIAL_SMOKE_ROWS) -> bytes:
    """KServe v2 JSON body for the `sequential` model: `rows` histories of one step, item token 1
    (the catalogue's first product) with event kind 1, so it is valid for any catalogue size and
    any `max_len` (shorter histories are right-aligned by the model)."""
    step = [[1]] * rows
    body = {
        "inputs": [
            {"name": name, "shape": [rows, 1], "datatype": "INT64",
             "data": [x for row in step for x in row]}
            for name in ("items", "kinds")
        ],
        "outputs": [{"name": "scores"}],
    }
    return json.dumps(body).encode()


def sequential_scores_ok(body: bytes, rows: int = SEQUENTIAL_SMOKE_ROWS) -> bool:
    """True when `body` is a KServe v2 reply whose `scores` output is (rows, n_items) finite logits."""
    try:
        scores = {o["name"]: o for o in json.loads(body)["outputs"]}["scores"]
        shape, data = [int(n) for n in scores["shape"]], scores["data"]
    except (ValueError, KeyError, TypeError):
        return False
    return (
        len(shape) == 2 and shape[0] == rows and shape[1] >= 1 and len(data) == rows * shape[1]
        and all(isinstance(s, (int, float)) and math.isfinite(s) for s in data)
    )


def default_smoke_checks(repo_dir: Path, ranker: str) -> dict[str, SmokeCheck]:
    """A check per model the repository ships: the ranker scored on a schema-shaped batch
    (`repo_dir/../schema.json`, the serving bundle layout) and, when shipped, the sequential model
    on one-step histories."""
    checks = {ranker: SmokeCheck(schema_smoke_request(Path(repo_dir).parent / "schema.json"),
                                 triton_scores_ok)}
    if (Path(repo_dir) / SEQUENTIAL_MODEL / "config.pbtxt").is_file():
        checks[SEQUENTIAL_MODEL] = SmokeCheck(sequential_request, sequential_scores_ok)
    return checks


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


def repository_models(repo_dir: Path) -> list[str]:
    """Names of the repository's models (directories holding a config.pbtxt), sorted."""
    repo_dir = Path(repo_dir)
    models = sorted(p.name for p in repo_dir.iterdir() if (p / "config.pbtxt").is_file()) \
        if repo_dir.is_dir() else []
    if not models:
        raise SageMakerError(
            f"{repo_dir} is not a Triton model repository (no <model>/config.pbtxt); build it "
            f"with serving.triton_repo first"
        )
    return models


def package_models(repo_dir: Path, out_dir: Path) -> dict[str, Path]:
    """One `<model>.tar.gz` per model of the repository, each holding the model's directory at its
    root: the layout the Triton image's MME mode loads (one model directory per archive)."""
    archives = {}
    for model in repository_models(repo_dir):
        archives[model] = Path(out_dir) / target_model(model)
        with tarfile.open(archives[model], "w:gz") as tar:
            tar.add(Path(repo_dir) / model, arcname=model)
    return archives


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


def _smoke_test(runtime: Any, config: SageMakerConfig, model: str, check: SmokeCheck) -> str:
    """Invoke `model` on the endpoint (its first invocation loads it from S3) and check the reply."""
    reply = runtime.invoke_endpoint(
        EndpointName=config.endpoint_name, TargetModel=target_model(model),
        ContentType="application/json", Body=check.request(),
    )
    body = reply["Body"].read()
    if not check.accept(body):
        raise SageMakerError(
            f"smoke test of model {model} on {config.endpoint_name} failed: unexpected reply "
            f"{body[:200]!r}"
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
        # MultiModel: ModelDataUrl is the prefix of the models' archives, each reached by its
        # TargetModel; SageMaker sets SAGEMAKER_MULTI_MODEL=true, which starts Triton in MME mode.
        PrimaryContainer={"Image": config.image, "Mode": "MultiModel", "ModelDataUrl": model_data_url},
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
    checks: Mapping[str, SmokeCheck] | None = None,
) -> DeployResult:
    """Deploy every model of the Triton repository `repo_dir` as `version`; see the module docstring.

    checks: the smoke test of each model, by Triton model name; default `default_smoke_checks`
    (the ranker `config.triton_model_name` and, when shipped, `sequential`). Every model the
    repository ships needs one, and every check names a shipped model.
    Raises `SageMakerNotConfigured` or `SageMakerError` before touching AWS, `DeployFailed` after
    rolling back.
    """
    config.require()
    models = repository_models(Path(repo_dir))
    if checks is None:
        checks = default_smoke_checks(Path(repo_dir), config.triton_model_name)
    if sorted(checks) != models:
        raise SageMakerError(
            f"{repo_dir} ships models {models} but smoke checks are given for {sorted(checks)}; "
            f"every deployed model is smoke-tested"
        )
    clients = _clients(config)
    sm = clients["sagemaker"]
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S%f")[:-3]
    name = resource_name(config.endpoint_name, version, stamp)
    prefix = f"{config.s3_prefix.strip('/')}/{config.endpoint_name}/{name}/"

    with tempfile.TemporaryDirectory() as tmp:
        for archive in package_models(Path(repo_dir), Path(tmp)).values():
            clients["s3"].upload_file(str(archive), config.bucket, prefix + archive.name)
    model_data_url = f"s3://{config.bucket}/{prefix}"
    logger.info("uploaded models %s of %s to %s", models, repo_dir, model_data_url)

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
        smoke = {m: _smoke_test(clients["sagemaker-runtime"], config, m, checks[m]) for m in models}
    except (SageMakerError, ClientError) as exc:
        raise _roll_back(clients, config, previous, exc) from exc
    register_autoscaling(clients["application-autoscaling"], config)
    logger.info("endpoint %s serves version %s of %s (config %s)", config.endpoint_name, version,
                models, name)
    return DeployResult(
        endpoint_name=config.endpoint_name, endpoint_config_name=name, model_name=name,
        model_data_url=model_data_url, version=version, previous_endpoint_config=previous,
        switch=switch, target_models={m: target_model(m) for m in models}, smoke_responses=smoke,
    )
