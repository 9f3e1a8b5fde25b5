"""Writes and reads Triton model repositories: `<repo>/<model>/config.pbtxt` and `<version>/model.onnx`.

`build_repository` writes the ONNX Runtime repository that is shipped (SageMaker, the stock Triton image);
`build_python_repository` derives from it the Python-backend twin that the local Triton serves with the
binary and Python backend PyTriton's wheel ships (which has no onnxruntime backend).

A repository holds the ranker (`dlrm`: dense, sparse -> score) and, when the served recommender keeps
the sequential source, `sequential` (items, kinds -> scores over the catalogue;
`build_sequential_repository`) with the same version number, so one deploy ships and loads both.
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
# How long the dynamic batcher holds a request for others to join it, by where the model runs. On CPU the
# ranker's ONNX run of a pool takes ~0.05 ms, so waiting to fill a batch never pays: 500 us cost Triton
# ~0.2-0.3 ms more CPU per call (the batcher's timed waits) and the request ~0.8 ms of wall time, measured on
# the benchmark's world (README, "Latency budget"). Requests that queue while the instance is busy are
# still run as one batch. On a GPU a short wait lets a batch amortise the kernel launches.
QUEUE_DELAY_US: dict[str, int] = {"KIND_CPU": 0, "KIND_GPU": 500}
SEQUENTIAL_MODEL = "sequential"  # the sequential source's Triton model, next to the ranker


@dataclass(frozen=True)
class SequentialRepositoryModel:
    """The sequential model of a repository: the newest version and its batching."""

    name: str
    version: int
    onnx_path: Path
    max_batch_size: int

    @property
    def config_path(self) -> Path:
        return self.onnx_path.parents[1] / "config.pbtxt"


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


def sequential_model_config(model_name: str, max_batch_size: int, instance_kind: InstanceKind,
                            instance_count: int, preferred_batch_sizes: Sequence[int],
                            max_queue_delay_us: int) -> pb.ModelConfig:
    """Triton config: items, kinds INT64 [-1, L] (left-padded, latest last) -> scores FP32 [-1, n_items].

    Lengths and the catalogue size are the ONNX graph's (`serving.sequential_export`); clients send
    the model's `max_len` steps, so requests share a shape and dynamic batching runs them together.
    """
    if max_batch_size < 1:
        raise RepositoryError(f"max_batch_size must be >= 1, got {max_batch_size}")
    config = pb.ModelConfig(name=model_name, platform="onnxruntime_onnx", max_batch_size=max_batch_size)
    config.input.add(name="items", data_type=pb.TYPE_INT64, dims=[-1])
    config.input.add(name="kinds", data_type=pb.TYPE_INT64, dims=[-1])
    config.output.add(name="scores", data_type=pb.TYPE_FP32, dims=[-1])
    config.dynamic_batching.preferred_batch_size.extend(
        sorted(size for size in preferred_batch_sizes if 1 <= size <= max_batch_size))
    config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    config.instance_group.add(kind=pb.ModelInstanceGroup.Kind.Value(instance_kind), count=instance_count)
    return config


def build_sequential_repository(
    onnx_path: Path,
    out_dir: Path,
    version: int = 1,
    model_name: str = SEQUENTIAL_MODEL,
    max_batch_size: int = 64,
    instance_kind: InstanceKind = "KIND_CPU",
    preferred_batch_sizes: Sequence[int] = (8, 32),
    max_queue_delay_us: int | None = None,
    instance_count: int = 1,
) -> Path:
    """Add `version` of the sequential model (`serving.sequential_export`'s ONNX file) to the repository
    at `out_dir`, beside the ranker; returns the model's directory. One request is one customer, so
    batches are requests that arrived together (at most `max_batch_size`, each a full catalogue of scores).
    max_queue_delay_us: None = `QUEUE_DELAY_US` of the instance kind."""
    if version < 1:
        raise RepositoryError(f"Triton versions are positive integers, got {version}")
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise RepositoryError(f"ONNX file {onnx_path} does not exist; run serving.sequential_export first")
    delay = QUEUE_DELAY_US[instance_kind] if max_queue_delay_us is None else max_queue_delay_us
    config = sequential_model_config(model_name, max_batch_size, instance_kind, instance_count,
                                     preferred_batch_sizes, delay)
    return _write_model(Path(out_dir) / model_name, version, onnx_path, config)


def read_sequential(repo_dir: Path, model_name: str = SEQUENTIAL_MODEL) -> SequentialRepositoryModel | None:
    """The repository's sequential model (newest version), or None when it ships without one."""
    config_path = Path(repo_dir) / model_name / "config.pbtxt"
    if not config_path.is_file():
        return None
    config = _read_config(config_path)
    inputs = sorted(tensor.name for tensor in config.input)
    if inputs != ["items", "kinds"]:
        raise RepositoryError(f"{config_path} inputs are {inputs}, expected ['items', 'kinds']")
    version = _newest_version(config_path)
    return SequentialRepositoryModel(model_name, version, config_path.parent / str(version) / "model.onnx",
                                     config.max_batch_size)


def instance_kind(repo_dir: Path, model_name: str) -> InstanceKind:
    """Where the repository's `model_name` runs: KIND_GPU when any of its instance groups is on a GPU, else KIND_CPU."""
    config = _read_config(Path(repo_dir) / model_name / "config.pbtxt")
    gpu = pb.ModelInstanceGroup.Kind.Value("KIND_GPU")
    return "KIND_GPU" if any(group.kind == gpu for group in config.instance_group) else "KIND_CPU"


def _write_model(model_dir: Path, version: int, onnx_path: Path, config: pb.ModelConfig) -> Path:
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_path, version_dir / "model.onnx")
    # Written last so a reader never sees a config pointing at a half-copied version.
    (model_dir / "config.pbtxt").write_text(text_format.MessageToString(config))
    log.info("triton repository %s: model %s version %d", model_dir.parent, model_dir.name, version)
    return model_dir


def _newest_version(config_path: Path) -> int:
    versions = sorted(int(p.parent.name) for p in config_path.parent.glob("*/model.onnx") if p.parent.name.isdigit())
    if not versions:
        raise RepositoryError(f"{config_path.parent} has no <version>/model.onnx")
    return versions[-1]


def build_repository(
    onnx_path: Path,
    schema_path: Path,
    out_dir: Path,
    model_name: str = "dlrm",
    version: int = 1,
    max_batch_size: int = 1024,
    instance_kind: InstanceKind = "KIND_CPU",
    preferred_batch_sizes: Sequence[int] = (64, 256, 1024),
    max_queue_delay_us: int | None = None,
    instance_count: int = 1,
) -> Path:
    """Add `version` of `model_name` to the repository at `out_dir` (other versions are kept).
    max_queue_delay_us: None = `QUEUE_DELAY_US` of the instance kind.

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
        QUEUE_DELAY_US[instance_kind] if max_queue_delay_us is None else max_queue_delay_us,
    )
    return _write_model(Path(out_dir) / model_name, version, onnx_path, config)


def read_repository(repo_dir: Path, model_name: str | None = None) -> RepositoryModel:
    """The newest version of `model_name` (or of the repository's only ranker) and its config."""
    repo_dir = Path(repo_dir)
    if model_name is None:  # the sequential model rides along with the ranker; it is not "the" model
        names = sorted(p.name for p in repo_dir.iterdir()
                       if (p / "config.pbtxt").is_file() and p.name != SEQUENTIAL_MODEL) if repo_dir.is_dir() else []
        if len(names) != 1:
            raise RepositoryError(f"repository {repo_dir} holds models {names}; name the one to serve")
        model_name = names[0]
    config_path = repo_dir / model_name / "config.pbtxt"
    if not config_path.is_file():
        raise RepositoryError(f"{config_path} does not exist; build the repository with build_repository")
    config = _read_config(config_path)
    versions = [_newest_version(config_path)]
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
    versions = {model.version: Path(model.onnx_path)}
    for other in also:  # more versions of the same model in one server: the arms of an experiment
        if (other.name, other.n_dense, other.n_sparse) != (model.name, model.n_dense, model.n_sparse):
            raise RepositoryError(f"{other.name} v{other.version} ({other.n_dense} dense, {other.n_sparse} sparse) "
                                  f"cannot be served as a version of {model.name} ({model.n_dense}, {model.n_sparse})")
        if other.version in versions and Path(other.onnx_path).resolve() != Path(model.onnx_path).resolve():
            raise RepositoryError(f"two bundles are both version {other.version} of {model.name}")
        versions[other.version] = Path(other.onnx_path)
    return _python_twin(model.config_path, model.name, versions, out_dir, onnx_threads)


def build_python_sequential(models: Sequence[SequentialRepositoryModel], out_dir: Path, onnx_threads: int = 1) -> Path:
    """The Python-backend twin of the sequential model: one version per bundle served (the deployed one
    first, then an experiment's other arms that ship one), each the version number of its ranker."""
    if not models:
        raise RepositoryError("no sequential model to serve")
    versions: dict[int, Path] = {}
    for m in models:
        if m.version in versions and versions[m.version].resolve() != Path(m.onnx_path).resolve():
            raise RepositoryError(f"two bundles are both version {m.version} of {m.name}")
        versions[m.version] = Path(m.onnx_path)
    return _python_twin(models[0].config_path, models[0].name, versions, out_dir, onnx_threads)


def _python_twin(config_path: Path, name: str, versions: dict[int, Path], out_dir: Path, onnx_threads: int) -> Path:
    """Write `out_dir/<name>/`: the config at `config_path` on the Python backend, one model.py per version."""
    config = _read_config(config_path)
    config.ClearField("platform")
    config.backend = "python"
    # The first version's file (the deployed bundle's) is the default; each version also gets its own below.
    config.parameters["onnx_path"].string_value = str(Path(next(iter(versions.values()))).resolve())
    config.parameters["intra_op_threads"].string_value = str(onnx_threads)
    if len(versions) > 1:
        config.version_policy.specific.versions.extend(sorted(versions))
        for version, path in versions.items():  # serving/triton_model.py reads its own version's file
            config.parameters[f"onnx_path_{version}"].string_value = str(Path(path).resolve())
    model_dir = Path(out_dir) / name
    if model_dir.exists():
        shutil.rmtree(model_dir)
    for version in versions:
        (model_dir / str(version)).mkdir(parents=True)
        shutil.copyfile(PYTHON_MODEL_SOURCE, model_dir / str(version) / "model.py")
    (model_dir / "config.pbtxt").write_text(text_format.MessageToString(config))
    return model_dir
