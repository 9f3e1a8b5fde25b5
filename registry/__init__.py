"""MLflow registry layer: run logging with lineage, registration, the promotion gate, downloads."""

from registry.errors import (
    MetricMissing,
    MissingArtifact,
    ModelNotFound,
    RegistryError,
)
from registry.lineage import Lineage, data_hash, git_sha
from registry.models import download_model, download_run_artifact, set_deployment_tag
from registry.promotion import (
    CHALLENGER,
    CHAMPION,
    ChampionEvidence,
    PromotionDecision,
    champion_version,
    promote,
    register_model,
    resolve_version,
)
from registry.tracking import (
    SCHEMA_FILE,
    WEIGHTS_FILE,
    WORKFLOW_DIR,
    log_rejected_data,
    log_training_run,
    model_signature,
)

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "ChampionEvidence",
    "Lineage",
    "MetricMissing",
    "MissingArtifact",
    "ModelNotFound",
    "PromotionDecision",
    "RegistryError",
    "SCHEMA_FILE",
    "WEIGHTS_FILE",
    "WORKFLOW_DIR",
    "champion_version",
    "data_hash",
    "download_model",
    "download_run_artifact",
    "git_sha",
    "log_rejected_data",
    "log_training_run",
    "model_signature",
    "promote",
    "register_model",
    "resolve_version",
    "set_deployment_tag",
]
