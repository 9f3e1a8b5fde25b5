"""Lineage of a training run: git commit, content hashes of its inputs, and the run's tags."""

from __future__ import annotations

import hashlib
import logging
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20


def _files_under(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path]


def data_hash(paths: list[Path] | tuple[Path, ...]) -> str:
    """SHA-256 over the contents and relative names of the given files (directories recursed).

    The order of `paths` does not matter; renaming or editing any file changes the hash.
    """
    digest = hashlib.sha256()
    roots = sorted(Path(p) for p in paths)
    for root in roots:
        if not root.exists():
            raise FileNotFoundError(f"cannot hash {root}: it does not exist")
        for file in _files_under(root):
            name = file.relative_to(root).as_posix() if root.is_dir() else root.name
            digest.update(name.encode())
            digest.update(b"\0")
            with file.open("rb") as fh:
                while chunk := fh.read(_CHUNK):
                    digest.update(chunk)
            digest.update(b"\0")
    return digest.hexdigest()


def git_sha(repo_dir: Path | None = None) -> str:
    """The commit checked out in `repo_dir` (default: this file's repository), or "unknown"."""
    cwd = Path(repo_dir) if repo_dir is not None else Path(__file__).resolve().parent
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError) as exc:
        logger.info("git sha unavailable in %s: %s", cwd, exc)
        return "unknown"
    sha = result.stdout.strip()
    return sha if result.returncode == 0 and sha else "unknown"


_MAX_TAG_CHARS = 5000  # MLflow's tag value limit; a long partition list is cut, not refused


def _fit_tag(value: str) -> str:
    return value if len(value) <= _MAX_TAG_CHARS else value[: _MAX_TAG_CHARS - 3] + "..."


@dataclass(frozen=True)
class Lineage:
    """Where a run came from; logged as `lineage.*` tags so runs can be traced and compared.

    `eval_set_hash` identifies the test set the eval metrics were computed on; the promotion
    gate only compares logged metrics of runs that share it.
    """

    git_sha: str
    data_hash: str
    eval_set_hash: str
    run_date: str  # YYYY-MM-DD, the logical date of the pipeline run
    input_paths: list[str] = field(default_factory=list)

    def as_tags(self) -> dict[str, str]:
        return {
            TAG_GIT_SHA: self.git_sha,
            TAG_DATA_HASH: self.data_hash,
            TAG_EVAL_SET_HASH: self.eval_set_hash,
            TAG_RUN_DATE: self.run_date,
            TAG_INPUT_PATHS: _fit_tag(",".join(self.input_paths)),
        }


TAG_GIT_SHA = "lineage.git_sha"
TAG_DATA_HASH = "lineage.data_hash"
TAG_EVAL_SET_HASH = "lineage.eval_set_hash"
TAG_RUN_DATE = "lineage.run_date"
TAG_INPUT_PATHS = "lineage.input_paths"
