"""Load the ETL output (Parquet parts + schema.json) into tensors and iterate over big batches."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from training.errors import DataError

log = logging.getLogger(__name__)

RAW_ID_COLUMNS = ("user_id_raw", "product_id_raw")


@dataclass(frozen=True)
class Schema:
    """The parts of `schema.json` training needs: feature order, cardinalities and the target."""

    categorical: list[str]
    continuous: list[str]
    target: str
    cardinalities: list[int]  # one per categorical column, in `categorical` order

    @property
    def n_dense(self) -> int:
        return len(self.continuous)


def load_schema(path: Path) -> Schema:
    """Read `schema.json` as written by the ETL (see docs/CONTRACTS.md)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"schema file {path} does not exist; run the ETL first or pass its schema.json")
    try:
        raw = json.loads(path.read_text())
        by_name = {c["name"]: c for c in raw["columns"]}
        categorical = list(raw["categorical"])
        continuous = list(raw["continuous"])
        target = str(raw["target"])
        cardinalities = [int(by_name[name]["cardinality"]) for name in categorical]
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path} does not follow the schema.json contract: missing or bad {exc}") from exc
    if not categorical:
        raise DataError(f"{path} lists no categorical columns; the DLRM needs at least one")
    if not continuous:
        raise DataError(f"{path} lists no continuous columns; the DLRM bottom MLP needs at least one")
    bad = [n for n, c in zip(categorical, cardinalities) if c < 1]
    if bad:
        raise DataError(f"{path}: categorical columns {bad} have cardinality < 1")
    return Schema(categorical, continuous, target, cardinalities)


@dataclass
class InteractionTensors:
    """One split as tensors: dense (N, n_dense) float32, sparse (N, n_sparse) int64, label (N,).

    `user_id_raw`/`product_id_raw` (N,) int64 numpy arrays are kept when asked for (evaluation).
    """

    dense: torch.Tensor
    sparse: torch.Tensor
    label: torch.Tensor
    user_id_raw: np.ndarray | None = None
    product_id_raw: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def to(self, device: torch.device | str, pin_memory: bool = False) -> "InteractionTensors":
        """Copy the tensors to `device`; pinning first lets the host-to-GPU copy run async."""
        device = torch.device(device)

        def move(t: torch.Tensor) -> torch.Tensor:
            if device.type == "cuda" and pin_memory and t.device.type == "cpu":
                t = t.pin_memory()
            return t.to(device, non_blocking=device.type == "cuda")

        return InteractionTensors(
            move(self.dense), move(self.sparse), move(self.label), self.user_id_raw, self.product_id_raw
        )


def part_files(split_dir: Path) -> list[Path]:
    split_dir = Path(split_dir)
    files = sorted(split_dir.glob("part-*.parquet"))
    if not files:
        raise DataError(f"no part-*.parquet files in {split_dir}; is this an ETL output split directory?")
    return files


def _column(table: pa.Table, name: str, split_dir: Path) -> np.ndarray:
    if name not in table.column_names:
        raise DataError(f"column {name!r} listed in schema.json is missing from the Parquet parts in {split_dir}")
    column = table.column(name)
    if column.null_count:
        raise DataError(f"column {name!r} in {split_dir} has {column.null_count} nulls; the ETL must fill them")
    return column.to_numpy()


def load_split(split_dir: Path, schema: Schema, with_raw_ids: bool = False) -> InteractionTensors:
    """Read every `part-*.parquet` of one split into CPU tensors, checking the contract."""
    split_dir = Path(split_dir)
    columns = [*schema.continuous, *schema.categorical, schema.target]
    if with_raw_ids:
        columns += list(RAW_ID_COLUMNS)
    tables = []
    for f in part_files(split_dir):
        names = pq.read_schema(f).names
        missing = [c for c in columns if c not in names]
        if missing:
            raise DataError(f"{f} lacks columns {missing} named by schema.json/contract")
        tables.append(pq.read_table(f, columns=columns))
    table = pa.concat_tables(tables)
    n = table.num_rows
    dense = np.empty((n, schema.n_dense), dtype=np.float32)
    for j, name in enumerate(schema.continuous):
        dense[:, j] = _column(table, name, split_dir)
    if not np.isfinite(dense).all():
        bad_rows, bad_cols = np.nonzero(~np.isfinite(dense))
        raise DataError(
            f"continuous column {schema.continuous[bad_cols[0]]!r} in {split_dir} has "
            f"{len(bad_rows)} non-finite values; first at row {bad_rows[0]}"
        )
    sparse = np.empty((n, len(schema.categorical)), dtype=np.int64)
    for j, (name, card) in enumerate(zip(schema.categorical, schema.cardinalities)):
        values = _column(table, name, split_dir).astype(np.int64, copy=False)
        out_of_range = (values < 0) | (values >= card)
        if out_of_range.any():
            first = int(np.argmax(out_of_range))
            raise DataError(
                f"categorical column {name!r} in {split_dir} has {int(out_of_range.sum())} values outside "
                f"[0, {card}) (cardinality in schema.json); first at row {first}: {values[first]}"
            )
        sparse[:, j] = values
    label = _column(table, schema.target, split_dir).astype(np.float32)
    raw = {c: _column(table, c, split_dir).astype(np.int64) for c in RAW_ID_COLUMNS} if with_raw_ids else {}
    log.info("loaded %d rows from %d parts in %s", n, len(tables), split_dir)
    return InteractionTensors(
        torch.from_numpy(dense),
        torch.from_numpy(sparse),
        torch.from_numpy(label),
        raw.get("user_id_raw"),
        raw.get("product_id_raw"),
    )


@dataclass
class Batch:
    """dense (B, n_dense) float32, sparse (B, n_sparse) int64, label (B,) float32."""

    dense: torch.Tensor
    sparse: torch.Tensor
    label: torch.Tensor


class BatchIterator:
    """Batches of pre-loaded tensors by index slicing; the order is shuffled by (seed, epoch).

    The permutation is drawn on the CPU with its own generator, so the order is the same on every
    device and does not depend on (or disturb) the global RNG, which makes resuming exact.
    """

    def __init__(
        self,
        tensors: InteractionTensors,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        self.tensors = tensors
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last

    def __len__(self) -> int:
        n = len(self.tensors)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        t = self.tensors
        n = len(t)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(n, generator=generator).to(t.label.device)
        for b in range(len(self)):
            lo, hi = b * self.batch_size, min((b + 1) * self.batch_size, n)
            if self.shuffle:
                idx = order[lo:hi]
                yield Batch(t.dense[idx], t.sparse[idx], t.label[idx])
            else:
                yield Batch(t.dense[lo:hi], t.sparse[lo:hi], t.label[lo:hi])

    def __iter__(self) -> Iterator[Batch]:
        return self.epoch(0)
