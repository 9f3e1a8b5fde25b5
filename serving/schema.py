"""Reads the parts of the ETL's schema.json that serving needs: feature names and counts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from serving.errors import SchemaError


@dataclass(frozen=True)
class FeatureSchema:
    """Model inputs in the order the DLRM expects them."""

    continuous: tuple[str, ...]  # columns of `dense`, (B, n_dense) float32
    categorical: tuple[str, ...]  # columns of `sparse`, (B, n_sparse) int64

    @property
    def n_dense(self) -> int:
        return len(self.continuous)

    @property
    def n_sparse(self) -> int:
        return len(self.categorical)


def read_schema(path: Path) -> FeatureSchema:
    """Parse schema.json (format in docs/CONTRACTS.md)."""
    path = Path(path)
    try:
        blob = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise SchemaError(f"schema file {path} does not exist; pass the ETL's schema.json") from exc
    except json.JSONDecodeError as exc:
        raise SchemaError(f"schema file {path} is not valid JSON: {exc}") from exc
    missing = [key for key in ("continuous", "categorical") if not isinstance(blob.get(key), list)]
    if missing:
        raise SchemaError(f"schema file {path} lacks the list(s) {missing}; re-run the ETL to rewrite it")
    if not blob["categorical"]:
        raise SchemaError(f"schema file {path} lists no categorical columns; the DLRM needs at least one")
    return FeatureSchema(continuous=tuple(blob["continuous"]), categorical=tuple(blob["categorical"]))
