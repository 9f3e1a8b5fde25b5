"""Writes and reads Triton model repositories: `<repo>/<model>/config.pbtxt` and `<version>/model.onnx`.

`build_repository` writes the ONNX Runtime repository that is shipped (SageMaker, the stock Triton image);
`build_python_repository` derives from it the Python-backend twin that the local Triton serves with the
binary and Python backend PyTriton's wheel ships (which has no onnxruntime backend).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from serving.errors import RepositoryError
from serving.schema import read_schema

log = logging.getLogger(__name__)

InstanceKind = Literal["KIND_CPU", "KIND_GPU"]


@dataclass(frozen=True)
class RepositoryModel:
    """One model of a repository as the server needs it: the newest version and its batching."""

    name: str
    version: int
    onnx_path: Path
    n_dense: int
    n_sparse: int
    max_batch_size: int
    preferred_batch_sizes: tuple[int, ...]
    max_queue_delay_us: int

    @property
    def config_path(self) -> Path:
        return self.onnx_path.parents[1] / "config.pbtxt"


PYTHON_MODEL_SOURCE = Path(__file__).with_name("triton_model.py")  # becomes <version>/model.py


def model_config(
    model_name: str,
    n_dense: int,
    n_sparse: int,
    max_batch_size: int,
    instance_kind: InstanceKind,
    instance_count: int,
    preferred_batch_sizes: Sequence[int],
    max_queue_delay_us: int,
) -> pb.ModelConfig:
    """Triton config: dense FP32 [-1, n_dense], sparse INT64 [-1, n_sparse] -> score FP32 [-1, 1]."""
    if max_batch_size < 1:
        raise RepositoryError(f"max_batch_size must be >= 1, got {max_batch_size}")
    too_big = [size for size in preferred_batch_sizes if not 1 <= size <= max_batch_size]
    if too_big:
        raise RepositoryError(f"preferred batch sizes {too_big} are outside [1, max_batch_size={max_batch_size}]")
    config = pb.ModelConfig(name=model_name, platform="onnxruntime_onnx", max_batch_size=max_batch_size)
    # With max_batch_size > 0 Triton prepends the batch axis, so dims omit it.
    config.input.add(name="dense", data_type=pb.TYPE_FP32, dims=[n_dense])
    config.input.add(name="sparse", data_type=pb.TYPE_INT64, dims=[n_sparse])
    config.output.add(name="score", data_type=pb.TYPE_FP32, dims=[1])
    config.dynamic_batching.preferred_batch_size.extend(sorted(preferred_batch_sizes))
    config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    config.instance_group.add(kind=pb.ModelInstanceGroup.Kind.Value(instance_kind), count=instance_count)
    return config


def build_repository(
    onnx_path: Path,
    schema_path: Path,
    out_dir: Path,
    model_name: str = "dlrm",
    version: int = 1,
    max_batch_size: int = 1024,
    instance_kind: InstanceKind = "KIND_CPU",
    preferred_batch_sizes: Sequence[int] = (64, 256, 1024),
    max_queue_delay_us: int = 500,
    instance_count: int = 1,
) -> Path:
    """Add `version` of `model_name` to the repository at `out_dir` (other versions are kept).

    Returns the model's directory, `out_dir/<model_name>`.
    """
    if version < 1:
        raise RepositoryError(f"Triton versions are positive integers, got {version}")
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise RepositoryError(f"ONNX file {onnx_path} does not exist; run serving.export.export_onnx first")
    schema = read_schema(schema_path)
    config = model_config(
        model_name,
        schema.n_dense,
        schema.n_sparse,
        max_batch_size,
        instance_kind,
        instance_count,
        [size for size in preferred_batch_sizes if size <= max_batch_size],
        max_queue_delay_us,
    )
    model_dir = Path(out_dir) / model_name
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_path, version_dir / "model.onnx")
    # Written last so a reader never sees a config pointing at a half-copied version.
    (model_dir / "config.pbtxt").write_text(text_format.MessageToString(config))
    log.info("triton repository %s: model %s version %d", out_dir, model_name, version)
    return model_dir


def read_repository(repo_dir: Path, model_name: str | None = None) -> RepositoryModel:
    """The newest version of `model_name` (or of the repository's only model) and its config."""
    repo_dir = Path(repo_dir)
    if model_name is None:
        names = sorted(p.name for p in repo_dir.iterdir() if (p / "config.pbtxt").is_file()) if repo_dir.is_dir() else []
        if len(names) != 1:
            raise RepositoryError(f"repository {repo_dir} holds models {names}; name the one to serve")
        model_name = names[0]
    config_path = repo_dir / model_name / "config.pbtxt"
    if not config_path.is_file():
        raise RepositoryError(f"{config_path} does not exist; build the repository with build_repository")
    config = _read_config(config_path)
    versions = sorted(int(p.parent.name) for p in config_path.parent.glob("*/model.onnx") if p.parent.name.isdigit())
    if not versions:
        raise RepositoryError(f"{config_path.parent} has no <version>/model.onnx")
    inputs = {tensor.name: list(tensor.dims) for tensor in config.input}
    if set(inputs) != {"dense", "sparse"}:
        raise RepositoryError(f"{config_path} inputs are {sorted(inputs)}, expected ['dense', 'sparse']")
    return RepositoryModel(
        name=model_name,
        version=versions[-1],
        onnx_path=config_path.parent / str(versions[-1]) / "model.onnx",
        n_dense=inputs["dense"][-1],
        n_sparse=inputs["sparse"][-1],
        max_batch_size=config.max_batch_size,
        preferred_batch_sizes=tuple(config.dynamic_batching.preferred_batch_size),
        max_queue_delay_us=config.dynamic_batching.max_queue_delay_microseconds,
    )


def _read_config(config_path: Path) -> pb.ModelConfig:
    try:
        return text_format.Parse(config_path.read_text(), pb.ModelConfig())
    except text_format.ParseError as exc:
        raise RepositoryError(f"{config_path} is not a valid Triton model config: {exc}") from exc


def build_python_repository(model: RepositoryModel, out_dir: Path, onnx_threads: int = 1,
                            also: Sequence[RepositoryModel] = ()) -> Path:
    """Write `out_dir/<model>/`: `model`'s config with the Python backend instead of ONNX Runtime, and
    `<version>/model.py` (serving/triton_model.py) running the repository's ONNX file where it lies.

    Tensors, batching and instance groups are copied, so clients see the same model; only the newest
    version is written (Triton's default version policy serves the newest one anyway). Replaces an
    earlier twin of the same model. Returns the model's directory.
    """
    config = _read_config(model.config_path)
    config.ClearField("platform")
    config.backend = "python"
    config.parameters["onnx_path"].string_value = str(Path(model.onnx_path).resolve())
    config.parameters["intra_op_threads"].string_value = str(onnx_threads)
    versions = {model.version: model}
    for other in also:  # more versions of the same model in one server: the arms of an experiment
        if (other.name, other.n_dense, other.n_sparse) != (model.name, model.n_dense, model.n_sparse):
            raise RepositoryError(f"{other.name} v{other.version} ({other.n_dense} dense, {other.n_sparse} sparse) "
                                  f"cannot be served as a version of {model.name} ({model.n_dense}, {model.n_sparse})")
        if other.version in versions and Path(other.onnx_path).resolve() != Path(model.onnx_path).resolve():
            raise RepositoryError(f"two bundles are both version {other.version} of {model.name}")
        versions[other.version] = other
    if len(versions) > 1:
        config.version_policy.specific.versions.extend(sorted(versions))
        for version, m in versions.items():  # serving/triton_model.py reads its own version's file
            config.parameters[f"onnx_path_{version}"].string_value = str(Path(m.onnx_path).resolve())
    model_dir = Path(out_dir) / model.name
    if model_dir.exists():
        shutil.rmtree(model_dir)
    for version in versions:
        (model_dir / str(version)).mkdir(parents=True)
        shutil.copyfile(PYTHON_MODEL_SOURCE, model_dir / str(version) / "model.py")
    (model_dir / "config.pbtxt").write_text(text_format.MessageToString(config))
    return model_dir
