"""Readers: REES46 CSV/Parquet, Criteo TSV (plain and gz), API export, date partitions."""

from __future__ import annotations

import gzip
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from etl.errors import ReaderError
from etl.readers import (CRITEO_COLUMNS, iter_criteo, iter_rees46, read_api_interactions,
                         read_events_dask, read_rees46, select_partitions)
from etl.synthetic import SyntheticConfig, generate, write_events


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory) -> Path:
    data = generate(SyntheticConfig(n_events=3_000, days=4, seed=11, start_date="2026-02-01"))
    out = tmp_path_factory.mktemp("raw")
    write_events(data.events, out)
    return out


def _criteo_rows(n: int, seed: int = 0) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        ints = ["" if rng.random() < 0.2 else str(int(rng.integers(0, 1000))) for _ in range(13)]
        cats = ["" if rng.random() < 0.1 else f"{int(rng.integers(0, 2**32)):08x}" for _ in range(26)]
        rows.append([str(int(rng.integers(0, 2)))] + ints + cats)
    return rows


@pytest.mark.parametrize("compressed", [False, True])
def test_criteo_reader_parses_plain_and_gzip_tsv_in_chunks(tmp_path, compressed):
    rows = _criteo_rows(250)
    text = "\n".join("\t".join(r) for r in rows) + "\n"
    path = tmp_path / ("day_0.gz" if compressed else "day_0.tsv")
    if compressed:
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    chunks = list(iter_criteo(path, chunk_rows=100))
    assert [len(c) for c in chunks] == [100, 100, 50]
    frame = pd.concat(chunks, ignore_index=True)
    assert list(frame.columns) == CRITEO_COLUMNS
    assert frame["label"].tolist() == [int(r[0]) for r in rows]
    expected_i1 = [float(r[1]) if r[1] else np.nan for r in rows]
    np.testing.assert_array_equal(frame["I1"].to_numpy(dtype="float64"), expected_i1)
    assert frame["C1"].tolist() == [r[14] or None for r in rows]
    assert frame["I1"].dtype == np.float32


def test_criteo_reader_rejects_a_file_with_the_wrong_column_count(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("1\t2\t3\n")
    with pytest.raises(ReaderError, match="40 tab-separated"):
        list(iter_criteo(path))


def test_rees46_csv_and_parquet_give_the_same_frame(raw_dir, tmp_path):
    parquet = read_rees46(raw_dir / "date=2026-02-01" / "events.parquet")
    csv = tmp_path / "events.csv"
    out = parquet.copy()
    out["event_time"] = out["event_time"].dt.strftime("%Y-%m-%d %H:%M:%S.%f UTC")
    out.to_csv(csv, index=False)
    from_csv = read_rees46(csv)
    pd.testing.assert_frame_equal(from_csv, parquet, check_dtype=False)
    assert from_csv["event_time"].dt.tz is not None


def test_api_export_is_read_with_the_rees46_layout(raw_dir, tmp_path):
    events = read_rees46(raw_dir)
    export = tmp_path / "interactions.csv"
    events.head(50).assign(event_time=events["event_time"].head(50).astype(str)).to_csv(
        export, index=False)
    frame = pd.concat(read_api_interactions(export))
    assert frame["user_id"].tolist() == events["user_id"].head(50).tolist()
    assert str(frame["event_time"].dtype) .startswith("datetime64")


def test_streaming_chunks_bound_the_rows_per_frame(raw_dir):
    sizes = [len(c) for c in iter_rees46(raw_dir, chunk_rows=200)]
    assert max(sizes) <= 200 and sum(sizes) == 3_000


def test_dask_reader_sees_every_event(raw_dir):
    ddf = read_events_dask(raw_dir)
    assert len(ddf) == 3_000
    assert ddf.npartitions >= 4


def test_missing_columns_are_reported_by_name(raw_dir, tmp_path):
    path = tmp_path / "x.csv"
    pd.DataFrame({"user_id": [1]}).to_csv(path, index=False)
    with pytest.raises(ReaderError):
        read_rees46(path)
    with pytest.raises(ReaderError, match="does not exist"):
        read_rees46(tmp_path / "nope.parquet")


def test_partition_window_is_half_open(raw_dir):
    picked = select_partitions(raw_dir, date(2026, 2, 2), date(2026, 2, 4))
    assert [p.parent.name for p in picked] == ["date=2026-02-02", "date=2026-02-03"]
    midday = datetime(2026, 2, 3, 12, tzinfo=timezone.utc)
    picked = select_partitions(raw_dir, datetime(2026, 2, 1, tzinfo=timezone.utc), midday)
    assert [p.parent.name for p in picked] == ["date=2026-02-01", "date=2026-02-02", "date=2026-02-03"]
    assert select_partitions(raw_dir, date(2027, 1, 1), date(2027, 1, 2)) == []
