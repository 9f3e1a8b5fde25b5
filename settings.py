"""The one place where configuration is read: environment variables with embedded defaults.

Every stage receives what it needs from a `Settings` object built here; no other module reads
the environment. The README's configuration table lists each variable below.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return default if value is None or value == "" else value


def _env_float(name: str, default: float) -> float:
    return float(_env(name, str(default)))


def _env_int(name: str, default: int) -> int:
    return int(_env(name, str(default)))


def _env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = _env(name, default)
    if value not in choices:
        raise ValueError(f"{name}={value!r}: expected one of {', '.join(choices)}")
    return value


def _repo_root() -> Path:
    return Path(__file__).resolve().parent


@dataclass(frozen=True)
class Settings:
    """Resolved configuration. Build with `Settings.from_env()`; override fields in tests."""

    home: Path  # root of all run outputs (data, quarantine, artifacts, serving)
    mlflow_tracking_uri: str
    mlflow_artifact_root: str
    model_name: str
    bad_row_threshold: float  # fraction of rejected rows above which validation fails closed
    window_days: int  # days of events the nightly run trains on (ending at the logical date)
    train_epochs: int
    train_batch_size: int
    train_device: str  # "auto", "cpu", "cuda"
    event_weights: str  # "view=0.125,cart=0.5,purchase=1": interest per event type (contracts.EventWeights)
    exclude: str  # "seen", "purchased" or "none": what the API leaves out by default, and the evaluation too
    test_days: int  # last days of the window held out to evaluate the night's model
    min_eval_users: int  # fewer evaluated users than this: the gate keeps the champion ("not enough evidence")
    triton_http_port: int
    triton_grpc_port: int
    triton_host: str
    triton_model_name: str
    database_url: str
    api_port: int
    airflow_host: str  # address the Airflow UI/API server binds; 0.0.0.0 exposes it to the network
    airflow_port: int
    mlflow_ui_port: int
    api_workers: int  # gunicorn worker processes of the API
    api_worker_connections: int  # connections one API worker holds at once
    api_compute_threads: int  # torch and BLAS threads per API worker (its requests share one core)
    api_header_timeout_s: int  # seconds to send a request's headers; also the idle keep-alive limit
    api_trusted_proxies: int  # proxies in front of the API whose X-Forwarded-For is trusted (0 = none)
    ratelimit_storage_uri: str
    ratelimit_default: str
    api_keys: str  # "key:role,key:role"; empty = auth off (embedded default)
    api_key_pepper: str  # secret mixed into stored API-key hashes
    event_time_skew_s: float  # how far past the server's clock an interaction's event_time may lie
    health_cache_s: float  # /health reuses its last result this long (per worker)
    api_deploy_check_s: float  # the API's workers look for a new deployment (serving/current) this often
    auth_failure_limit: str  # failed authentications per address before 429, e.g. "20 per minute"
    idempotency_ttl_s: float  # how long a POST's Idempotency-Key and its answer are kept
    deploy_target: str  # "local" or "sagemaker"
    aws_endpoint_url: str  # empty = real AWS; a moto server URL in tests
    aws_region: str
    sagemaker_bucket: str
    sagemaker_role_arn: str
    sagemaker_image_uri: str
    sagemaker_instance_type: str
    sagemaker_endpoint_name: str
    experiment_ttl_s: float = 5.0  # API workers re-read the running experiment at most this often
    impressions: str = "all"  # "all": every recommendation response is logged; "experiment": only during one
    experiment_alpha: float = 0.05  # default always-valid false-positive rate of an experiment's tests
    experiment_min_impressions: int = 1000  # default minimum impressions per arm before a decision
    experiment_max_days: float = 14.0  # default longest run; past it without a winner the champion stays
    dask_scheduler: str = ""  # dask.distributed scheduler the ETL runs on; empty = threads in-process
    drift_warn: float = 0.1  # PSI between nights (registry.drift) at which the run is tagged drift=warn
    drift_block: float = 0.25  # PSI at which the promotion gate refuses the night's model
    # How the nightly asks its held-out days: "window" (every cart/purchase in them is a target) or
    # "session_rest" (each user's last session in them: first half history, the rest targets; the
    # ranker's own cuts too). training.quality.last_days_split.
    eval_split: str = "window"
    # Where the API runs the served recommender's sequential model: "triton" (beside the ranker), "worker"
    # (ONNX Runtime in each API worker) or "auto" (Triton only when it runs the model on a GPU).
    # serving.recommender.sequential_runs_on.
    sequential_on: str = "auto"

    @classmethod
    def from_env(cls) -> "Settings":
        home = Path(_env("RECSYS_HOME", str(_repo_root() / "var"))).resolve()
        return cls(
            home=home,
            mlflow_tracking_uri=_env("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}"),
            mlflow_artifact_root=_env("RECSYS_MLFLOW_ARTIFACT_ROOT", (home / "mlartifacts").as_uri()),
            model_name=_env("RECSYS_MODEL_NAME", "dlrm-ranker"),
            bad_row_threshold=_env_float("RECSYS_BAD_ROW_THRESHOLD", 0.05),
            window_days=_env_int("RECSYS_WINDOW_DAYS", 14),
            train_epochs=_env_int("RECSYS_TRAIN_EPOCHS", 3),
            train_batch_size=_env_int("RECSYS_TRAIN_BATCH_SIZE", 4096),
            train_device=_env("RECSYS_TRAIN_DEVICE", "auto"),
            event_weights=_env("RECSYS_EVENT_WEIGHTS", "view=0.125,cart=0.5,purchase=1,remove_from_cart=0"),
            exclude=_env("RECSYS_EXCLUDE", "seen"),
            test_days=_env_int("RECSYS_TEST_DAYS", 1),
            min_eval_users=_env_int("RECSYS_MIN_EVAL_USERS", 100),
            triton_http_port=_env_int("RECSYS_TRITON_HTTP_PORT", 8000),
            triton_grpc_port=_env_int("RECSYS_TRITON_GRPC_PORT", 8001),
            triton_host=_env("RECSYS_TRITON_HOST", "127.0.0.1"),
            triton_model_name=_env("RECSYS_TRITON_MODEL", "dlrm"),
            database_url=_env("RECSYS_DATABASE_URL", f"sqlite:///{home / 'api.db'}"),
            api_port=_env_int("RECSYS_API_PORT", 5000),
            airflow_host=_env("RECSYS_AIRFLOW_HOST", "127.0.0.1"),
            airflow_port=_env_int("RECSYS_AIRFLOW_PORT", 8080),
            mlflow_ui_port=_env_int("RECSYS_MLFLOW_UI_PORT", 5001),
            api_workers=_env_int("RECSYS_API_WORKERS", 2),
            api_worker_connections=_env_int("RECSYS_API_WORKER_CONNECTIONS", 1000),
            api_compute_threads=_env_int("RECSYS_API_COMPUTE_THREADS", 1),
            api_header_timeout_s=_env_int("RECSYS_API_HEADER_TIMEOUT_S", 5),
            api_trusted_proxies=_env_int("RECSYS_API_TRUSTED_PROXIES", 0),
            ratelimit_storage_uri=_env("RECSYS_RATELIMIT_STORAGE", "memory://"),
            ratelimit_default=_env("RECSYS_RATELIMIT_DEFAULT", "600 per minute"),
            api_keys=_env("RECSYS_API_KEYS", ""),
            api_key_pepper=_env("RECSYS_API_KEY_PEPPER", ""),
            event_time_skew_s=_env_float("RECSYS_EVENT_TIME_SKEW_S", 300.0),
            health_cache_s=_env_float("RECSYS_HEALTH_CACHE_S", 1.0),
            api_deploy_check_s=_env_float("RECSYS_API_DEPLOY_CHECK_S", 5.0),
            auth_failure_limit=_env("RECSYS_AUTH_FAILURE_LIMIT", "20 per minute"),
            idempotency_ttl_s=_env_float("RECSYS_IDEMPOTENCY_TTL_S", 86400.0),
            deploy_target=_env("RECSYS_DEPLOY_TARGET", "local"),
            aws_endpoint_url=_env("AWS_ENDPOINT_URL", ""),
            aws_region=_env("AWS_DEFAULT_REGION", "us-east-1"),
            sagemaker_bucket=_env("RECSYS_SAGEMAKER_BUCKET", ""),
            sagemaker_role_arn=_env("RECSYS_SAGEMAKER_ROLE_ARN", ""),
            sagemaker_image_uri=_env("RECSYS_SAGEMAKER_IMAGE_URI", ""),
            sagemaker_instance_type=_env("RECSYS_SAGEMAKER_INSTANCE_TYPE", "ml.g4dn.xlarge"),
            sagemaker_endpoint_name=_env("RECSYS_SAGEMAKER_ENDPOINT", ""),
            dask_scheduler=_env("RECSYS_DASK_SCHEDULER", ""),
            experiment_ttl_s=_env_float("RECSYS_EXPERIMENT_TTL_S", 5.0),
            impressions=_env_choice("RECSYS_IMPRESSIONS", "all", ("all", "experiment")),
            eval_split=_env_choice("RECSYS_EVAL_SPLIT", "window", ("window", "session_rest")),
            sequential_on=_env_choice("RECSYS_SEQUENTIAL_ON", "auto", ("auto", "triton", "worker")),
            experiment_alpha=_env_float("RECSYS_EXPERIMENT_ALPHA", 0.05),
            experiment_min_impressions=_env_int("RECSYS_EXPERIMENT_MIN_IMPRESSIONS", 1000),
            experiment_max_days=_env_float("RECSYS_EXPERIMENT_MAX_DAYS", 14.0),
            drift_warn=_env_float("RECSYS_DRIFT_WARN", 0.1),
            drift_block=_env_float("RECSYS_DRIFT_BLOCK", 0.25),
        )

    # Where each stage writes; stage outputs are versioned by run date (YYYY-MM-DD).
    @property
    def raw_dir(self) -> Path:
        return self.home / "raw"

    def run_dir(self, run_date: str) -> Path:
        return self.home / "runs" / run_date

    @property
    def pid_dir(self) -> Path:
        """One JSON file per long-running process group the project started (`python -m cli stop`)."""
        return self.home / "pids"

    @property
    def serving_dir(self) -> Path:
        return self.home / "serving"

    @property
    def triton_http_url(self) -> str:
        return f"{self.triton_host}:{self.triton_http_port}"

    @property
    def triton_grpc_url(self) -> str:
        return f"{self.triton_host}:{self.triton_grpc_port}"


def get_settings() -> Settings:
    return Settings.from_env()


@dataclass(frozen=True)
class StackSettings:
    """The production topology that `python -m cli stack up` runs on one machine (ops/stack.py).

    Services it does not start (PostgreSQL, Redis) are given by URL; every port is configurable.
    Airflow's address and port, the MLflow server's port and the API's are `Settings`'
    (RECSYS_AIRFLOW_HOST/_PORT, RECSYS_MLFLOW_UI_PORT, RECSYS_API_PORT), shared with `python -m cli`.
    """

    host: str  # address the stack's services other than Airflow bind to (MLflow, Dask, API)
    postgres_url: str  # server URL without a database; the stack creates `<db_prefix>_<role>` there
    db_prefix: str
    broker_url: str  # Celery broker
    ratelimit_storage: str  # the API's Flask-Limiter storage while the stack runs it
    dask_port: int  # dask.distributed scheduler
    dask_workers: int
    artifacts: str  # MLflow artifact store: a local directory, or s3://bucket/prefix
    schedule: bool  # False: the scheduler runs triggered DAG runs only (tests, demos)
    start_timeout_s: float  # how long `up` waits for each service's health check
    stop_timeout_s: float  # SIGTERM to SIGKILL in `down`

    @classmethod
    def from_env(cls) -> "StackSettings":
        return cls(
            host=_env("RECSYS_STACK_HOST", "127.0.0.1"),
            postgres_url=_env("RECSYS_STACK_POSTGRES", "postgresql+psycopg2://postgres@127.0.0.1:5432"),
            db_prefix=_env("RECSYS_STACK_DB_PREFIX", "recsys_stack"),
            broker_url=_env("RECSYS_STACK_BROKER_URL", "redis://127.0.0.1:6379/0"),
            ratelimit_storage=_env("RECSYS_STACK_RATELIMIT_STORAGE", "redis://127.0.0.1:6379/1"),
            dask_port=_env_int("RECSYS_DASK_PORT", 8786),
            dask_workers=_env_int("RECSYS_DASK_WORKERS", 2),
            artifacts=_env("RECSYS_STACK_ARTIFACTS", ""),
            schedule=_env("RECSYS_STACK_SCHEDULE", "true").lower() in ("1", "true", "yes"),
            start_timeout_s=_env_float("RECSYS_STACK_START_TIMEOUT", 180.0),
            stop_timeout_s=_env_float("RECSYS_STACK_STOP_TIMEOUT", 20.0),
        )

    def database_url(self, role: str) -> str:
        """SQLAlchemy URL of the stack's database for `role` (airflow, mlflow, api)."""
        return f"{self.postgres_url.rstrip('/')}/{self.db_prefix}_{role}"


# ---------------------------------------------------------------- command lines
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging() -> None:
    """How every command line logs: INFO and up to stderr, as time, level, logger, message."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)


def run_command(command: Callable[[], object], errors: type[Exception] | tuple[type[Exception], ...],
                exit_code: int) -> int:
    """The frame of each package's `python -m <package>`: logging configured, `command()` run,
    and the package's own errors reported as one `error: ...` line on stderr with `exit_code`
    instead of a traceback. 0 when the command ran through."""
    configure_logging()
    try:
        command()
    except errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_code
    return 0
