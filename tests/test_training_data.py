"""Loading the ETL output into tensors and batching it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.test_training_support import PlantedData, write_etl_output
from training.data import BatchIterator, load_schema, load_split
from training.errors import DataError


@pytest.fixture()
def etl_dir(tmp_path: Path) -> Path:
    return write_etl_output(tmp_path / "etl", PlantedData(rows=(300, 50, 50)), parts=3)


def test_split_loads_as_typed_tensors_in_part_order(etl_dir: Path) -> None:
    schema = load_schema(etl_dir / "schema.json")
    rows = load_split(etl_dir / "train", schema, with_raw_ids=True)
    frame = pd.concat(pd.read_parquet(f) for f in sorted((etl_dir / "train").glob("part-*.parquet")))
    assert rows.dense.dtype == torch.float32 and rows.dense.shape == (300, 2)
    assert rows.sparse.dtype == torch.int64 and rows.sparse.shape == (300, 4)
    assert rows.label.dtype == torch.float32 and rows.label.shape == (300,)
    np.testing.assert_array_equal(rows.sparse[:, 1].numpy(), frame["product_id"].to_numpy())
    np.testing.assert_allclose(rows.dense[:, 0].numpy(), frame["price"].to_numpy())
    np.testing.assert_array_equal(rows.user_id_raw, frame["user_id_raw"].to_numpy())
    assert schema.cardinalities == [151, 121, 13, 10]


def test_index_beyond_cardinality_is_rejected_with_the_column_name(etl_dir: Path) -> None:
    schema_path = etl_dir / "schema.json"
    schema = json.loads(schema_path.read_text())
    schema["columns"][2]["cardinality"] = 3  # category_id values go up to 12
    schema_path.write_text(json.dumps(schema))
    with pytest.raises(DataError, match="category_id.*outside \\[0, 3\\)"):
        load_split(etl_dir / "train", load_schema(schema_path))


def test_missing_column_and_missing_parts_are_reported(etl_dir: Path, tmp_path: Path) -> None:
    schema_path = etl_dir / "schema.json"
    schema = json.loads(schema_path.read_text())
    schema["continuous"].append("discount")
    schema_path.write_text(json.dumps(schema))
    with pytest.raises(DataError, match="discount"):
        load_split(etl_dir / "train", load_schema(schema_path))
    with pytest.raises(DataError, match="no part-"):
        load_split(tmp_path / "empty", load_schema(schema_path))
    with pytest.raises(DataError, match="does not exist"):
        load_schema(tmp_path / "nope.json")


def test_non_finite_continuous_values_are_rejected(etl_dir: Path) -> None:
    part = sorted((etl_dir / "valid").glob("part-*.parquet"))[0]
    frame = pd.read_parquet(part)
    frame.loc[frame.index[3], "noise"] = np.inf
    frame.to_parquet(part, index=False)
    with pytest.raises(DataError, match="'noise'.*non-finite"):
        load_split(etl_dir / "valid", load_schema(etl_dir / "schema.json"))


def test_each_epoch_visits_every_row_once_in_a_seeded_order(etl_dir: Path) -> None:
    rows = load_split(etl_dir / "train", load_schema(etl_dir / "schema.json"))
    rows.label = torch.arange(len(rows), dtype=torch.float32)  # row ids, to trace the order
    batches = BatchIterator(rows, batch_size=64, seed=3)
    assert len(batches) == 5
    epoch0 = torch.cat([b.label for b in batches.epoch(0)])
    epoch1 = torch.cat([b.label for b in batches.epoch(1)])
    again = torch.cat([b.label for b in BatchIterator(rows, batch_size=64, seed=3).epoch(0)])
    assert sorted(epoch0.tolist()) == list(range(300))
    assert not torch.equal(epoch0, epoch1)
    assert torch.equal(epoch0, again)
    first = next(BatchIterator(rows, batch_size=64, seed=3).epoch(0))
    row = int(first.label[0])
    assert torch.equal(first.sparse[0], rows.sparse[row]) and torch.equal(first.dense[0], rows.dense[row])


def test_unshuffled_batches_keep_row_order_and_drop_last_drops_the_tail(etl_dir: Path) -> None:
    rows = load_split(etl_dir / "valid", load_schema(etl_dir / "schema.json"))
    ordered = torch.cat([b.label for b in BatchIterator(rows, 16, shuffle=False).epoch(0)])
    assert torch.equal(ordered, rows.label)
    sizes = [len(b.label) for b in BatchIterator(rows, 16, drop_last=True).epoch(0)]
    assert sizes == [16, 16, 16]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_tensors_move_to_the_gpu_pinned(etl_dir: Path) -> None:
    rows = load_split(etl_dir / "valid", load_schema(etl_dir / "schema.json")).to("cuda", pin_memory=True)
    batch = next(BatchIterator(rows, 16).epoch(0))
    assert batch.dense.is_cuda and batch.sparse.is_cuda
