"""Readers for raw inputs: REES46 events (CSV/Parquet), Criteo TSV and the API-store export.

The readers of real public data sets shipped in packages live in `etl.public_data`.

Streaming readers yield pandas chunks built from pyarrow record batches, so memory is bounded by
the chunk size; `read_events_dask` gives a Dask DataFrame for the ETL workflow.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from datetime import date, datetime
from pathlib import Path

import dask.dataframe as dd
from dask import delayed
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from etl.errors import ReaderError
from etl.public_data import read_instacart_sample  # noqa: F401  (public data readers live there)
from etl.synthetic import EVENT_COLUMNS, EVENTS_SCHEMA

log = logging.getLogger(__name__)

CRITEO_DENSE = [f"I{i}" for i in range(1, 14)]
CRITEO_SPARSE = [f"C{i}" for i in range(1, 27)]
CRITEO_COLUMNS = ["label", *CRITEO_DENSE, *CRITEO_SPARSE]
CRITEO_SCHEMA = pa.schema([("label", pa.int8())]
                          + [(c, pa.float32()) for c in CRITEO_DENSE]
                          + [(c, pa.string()) for c in CRITEO_SPARSE])
_PARTITION = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")
DEFAULT_CHUNK_ROWS = 1_000_000


def _as_paths(paths: Path | str | Sequence[Path | str]) -> list[Path]:
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    out: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.suffix in {".parquet", ".csv", ".gz"})
            if not found:
                raise ReaderError(f"{item} holds no .parquet or .csv files")
            out.extend(found)
        elif item.exists():
            out.append(item)
        else:
            raise ReaderError(f"input {item} does not exist")
    return out


def _is_csv(path: Path) -> bool:
    return ".csv" in path.suffixes or ".tsv" in path.suffixes


def _check_columns(path: Path, names: Sequence[str], required: Sequence[str]) -> None:
    missing = [c for c in required if c not in names]
    if missing:
        raise ReaderError(f"{path} lacks required columns {missing}; found {list(names)}")


def iter_rees46(paths: Path | str | Sequence[Path | str], columns: Sequence[str] | None = None,
                chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    """Yield pandas chunks of REES46 events from CSV or Parquet files (or directories of them).

    CSV values are converted to the contract types (event_time as UTC timestamps), so a CSV and a
    Parquet file with the same rows give the same frames. Parquet chunks hold `chunk_rows` rows;
    CSV chunks follow pyarrow's 16 MiB read blocks.
    """
    wanted = list(columns or EVENT_COLUMNS)
    for path in _as_paths(paths):
        if _is_csv(path):
            types = {f.name: f.type for f in EVENTS_SCHEMA if f.name != "event_time"}
            convert = pacsv.ConvertOptions(column_types=types, include_columns=wanted,
                                           strings_can_be_null=True,
                                           timestamp_parsers=["%Y-%m-%d %H:%M:%S UTC",
                                                              pacsv.ISO8601])
            read = pacsv.ReadOptions(block_size=1 << 24)
            try:
                reader = pacsv.open_csv(path, read_options=read, convert_options=convert)
            except (pa.ArrowInvalid, KeyError) as exc:
                raise ReaderError(f"cannot read {path} as REES46 CSV: {exc}") from exc
            _check_columns(path, reader.schema.names, wanted)
            batches: Iterator[pa.RecordBatch] = iter(reader)
        else:
            pfile = pq.ParquetFile(path)
            _check_columns(path, pfile.schema_arrow.names, wanted)
            batches = pfile.iter_batches(batch_size=chunk_rows, columns=wanted)
        for batch in batches:
            frame = batch.to_pandas()
            if "event_time" in frame and not isinstance(frame["event_time"].dtype,
                                                        pd.DatetimeTZDtype):
                frame["event_time"] = pd.to_datetime(frame["event_time"], utc=True)
            yield frame[wanted]


def read_rees46(paths: Path | str | Sequence[Path | str],
                columns: Sequence[str] | None = None) -> pd.DataFrame:
    """All REES46 events of the given files as one pandas frame (small inputs only)."""
    chunks = list(iter_rees46(paths, columns))
    return pd.concat(chunks, ignore_index=True) if chunks else pd.DataFrame(columns=columns)


def read_events_dask(paths: Path | str | Sequence[Path | str],
                     columns: Sequence[str] | None = None) -> dd.DataFrame:
    """REES46 events as a Dask DataFrame (one partition per Parquet row group or CSV block)."""
    files = _as_paths(paths)
    wanted = list(columns or EVENT_COLUMNS)
    parquet = [str(p) for p in files if not _is_csv(p)]
    csv = [p for p in files if _is_csv(p)]
    parts: list[dd.DataFrame] = []
    if parquet:
        for p in parquet:
            _check_columns(Path(p), pq.read_schema(p).names, wanted)
        parts.append(dd.read_parquet(parquet, columns=wanted, split_row_groups=True))
    if csv:
        parts.append(dd.from_delayed(  # streaming pyarrow reader per file keeps types exact
            [delayed(read_rees46)(p, wanted) for p in csv], meta=_empty_events(wanted)))
    return parts[0] if len(parts) == 1 else dd.concat(parts)


def _empty_events(columns: list[str]) -> pd.DataFrame:
    return EVENTS_SCHEMA.empty_table().to_pandas()[columns]


def read_api_interactions(path: Path | str, chunk_rows: int = DEFAULT_CHUNK_ROWS
                          ) -> Iterator[pd.DataFrame]:
    """The API store's interactions export: it is written in the REES46 layout."""
    return iter_rees46(path, chunk_rows=chunk_rows)


def iter_criteo(path: Path | str, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    """Yield pandas chunks of a Criteo TSV (label, I1-I13, C1-C26; no header; plain or .gz).

    Empty fields become nulls: NaN for the integer features (read as float32), None for the
    hashed categoricals (8-character hex strings).
    """
    path = Path(path)
    if not path.exists():
        raise ReaderError(f"Criteo file {path} does not exist")
    read = pacsv.ReadOptions(column_names=CRITEO_COLUMNS, block_size=1 << 22)
    parse = pacsv.ParseOptions(delimiter="\t")
    convert = pacsv.ConvertOptions(column_types=CRITEO_SCHEMA, strings_can_be_null=True,
                                   null_values=[""])
    stream = pa.input_stream(str(path), compression="detect")
    try:
        reader = pacsv.open_csv(stream, read_options=read, parse_options=parse,
                                convert_options=convert)
        pending: list[pa.RecordBatch] = []
        n_pending = 0
        for batch in reader:
            pending.append(batch)
            n_pending += batch.num_rows
            if n_pending >= chunk_rows:
                yield from _split(pa.Table.from_batches(pending), chunk_rows)
                pending, n_pending = [], 0
        if pending:
            yield from _split(pa.Table.from_batches(pending), chunk_rows)
    except pa.ArrowInvalid as exc:
        raise ReaderError(f"{path} is not a Criteo TSV with 40 tab-separated columns: {exc}") from exc


def _split(table: pa.Table, chunk_rows: int) -> Iterator[pd.DataFrame]:
    for start in range(0, table.num_rows, chunk_rows):
        yield table.slice(start, chunk_rows).to_pandas()


def partition_date(path: Path) -> date | None:
    """The day of a `date=YYYY-MM-DD` partition directory (or a file inside one)."""
    for part in (path.name, path.parent.name):
        match = _PARTITION.match(part)
        if match:
            return date.fromisoformat(match.group(1))
    return None


def select_partitions(raw_dir: Path, start: date | datetime, end: date | datetime) -> list[Path]:
    """Files of the `date=` partitions whose day lies in [start, end), in date order."""
    start_d = start.date() if isinstance(start, datetime) else start
    end_d = end.date() if isinstance(end, datetime) else end
    if isinstance(end, datetime) and end.time() != datetime.min.time():
        # A window ending mid-day still needs that day's partition.
        end_d = date.fromordinal(end_d.toordinal() + 1)
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise ReaderError(f"raw directory {raw_dir} does not exist")
    chosen = []
    for part in sorted(raw_dir.iterdir()):
        day = partition_date(part)
        if part.is_dir() and day is not None and start_d <= day < end_d:
            chosen.extend(sorted(f for f in part.iterdir()
                                 if f.suffix in {".parquet", ".csv", ".gz"}))
    log.info("selected %d files in [%s, %s) under %s", len(chosen), start_d, end_d, raw_dir)
    return chosen
