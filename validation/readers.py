"""Read raw CSV/Parquet event files as chunks of normalised strings, so nothing is lost to parsing.

Every value comes out as a trimmed string or None (empty strings count as missing). CSV lines
with the wrong number of fields are skipped by the parser and handed back as `MalformedLine`s.
A file that cannot be opened or decoded raises `UnreadableFile`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from validation.errors import ValidationError

PARQUET_SUFFIXES = {".parquet", ".pq"}
_BYTES_PER_ROW_GUESS = 128  # sizes the CSV read block so one block is about one chunk


class UnreadableFile(ValidationError):
    """The file cannot be parsed as CSV or Parquet (truncated, garbled, wrong encoding)."""


@dataclass(frozen=True)
class MalformedLine:
    """A CSV line the parser could not split into the header's number of fields."""

    line_number: int | None  # 1-based physical line in the file (the header is line 1)
    text: str


@dataclass
class RawChunk:
    """Up to `chunk_rows` consecutive records of one file, all values as `str | None`."""

    frame: pd.DataFrame  # index: 0-based record number within the file
    malformed: list[MalformedLine] = field(default_factory=list)


def is_parquet(path: Path) -> bool:
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return True
    with path.open("rb") as handle:
        return handle.read(4) == b"PAR1"


def count_data_lines(path: Path) -> int:
    """Lines after the header, counted in binary so a garbled file can still be counted."""
    lines, last = 0, b""
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    if last not in (b"", b"\n"):
        lines += 1  # a final line without a newline still holds a record
    return max(lines - 1, 0)


# Bytes a REES46 event takes in a snappy Parquet file (measured on etl.synthetic output: 35-45);
# used for a footerless Parquet only when no readable Parquet input of the run gives a better figure.
PARQUET_BYTES_PER_ROW_GUESS = 40


@dataclass(frozen=True)
class RowCount:
    """How many records an unreadable file holds, and how that number was found."""

    rows: int
    counted_by: str  # "parquet_footer" (exact), "csv_lines" (lines after the header), "size_estimate"


def parquet_footer_rows(path: Path) -> int | None:
    """Row count from a Parquet footer, None when the footer cannot be read."""
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception:  # noqa: BLE001 - any failure means no readable footer
        return None


def parquet_data_bytes_per_row(path: Path) -> float | None:
    """Bytes per row of a readable Parquet file's data (the file less its footer)."""
    try:
        metadata = pq.ParquetFile(path).metadata
    except Exception:  # noqa: BLE001
        return None
    if metadata.num_rows == 0:
        return None
    return max(path.stat().st_size - metadata.serialized_size, 1) / metadata.num_rows


def count_unreadable_rows(path: Path, parquet_bytes_per_row: float | None = None) -> RowCount:
    """Best count of the records an unreadable file holds, never less than one.

    Parquet: the footer's row count when the footer reads; otherwise the file size over
    `parquet_bytes_per_row` (learnt from the run's readable Parquet inputs, else a guess), an
    estimate. CSV (or anything else): the lines after the header, counted in binary.
    A non-empty file always counts as at least one record, so an unreadable file is never free.
    """
    if is_parquet(path):
        rows = parquet_footer_rows(path)
        if rows is not None:
            return RowCount(max(rows, 1), "parquet_footer")
        per_row = parquet_bytes_per_row or PARQUET_BYTES_PER_ROW_GUESS
        return RowCount(max(round(path.stat().st_size / per_row), 1), "size_estimate")
    return RowCount(max(count_data_lines(path), 1), "csv_lines")


class RawFile:
    """One input file: its header columns and an iterator of string chunks."""

    def __init__(self, path: Path, chunk_rows: int) -> None:
        self.path = path
        self.chunk_rows = chunk_rows
        self.parquet = is_parquet(path)
        self.columns = self._read_columns()

    def _read_columns(self) -> list[str]:
        if self.path.stat().st_size == 0:
            return []
        try:
            if self.parquet:
                return list(pq.ParquetFile(self.path).schema_arrow.names)
            # utf-8-sig: spreadsheet exports start with a byte-order mark, which Arrow's reader skips.
            with self.path.open("r", encoding="utf-8-sig", newline="") as handle:
                header = next(csv.reader(io.StringIO(handle.readline())), [])
            return [name.strip() for name in header]
        except Exception as exc:  # noqa: BLE001 - any parse/decode error means unreadable
            raise UnreadableFile(f"{self.path}: cannot read header ({exc})") from exc

    def chunks(self) -> Iterator[RawChunk]:
        if not self.columns:
            return
        batches = self._parquet_batches() if self.parquet else self._csv_batches()
        start = 0
        try:
            for table, malformed in _rebatch(batches, self.chunk_rows):
                frame = _to_string_frame(table)
                frame.index = pd.RangeIndex(start, start + len(frame))
                start += len(frame)
                yield RawChunk(frame=frame, malformed=malformed)
        except (pa.ArrowException, OSError, UnicodeDecodeError, ValueError) as exc:
            raise UnreadableFile(f"{self.path}: unreadable after {start} records ({exc})") from exc

    def _parquet_batches(self) -> Iterator[tuple[pa.RecordBatch, list[MalformedLine]]]:
        try:
            reader = pq.ParquetFile(self.path)
        except Exception as exc:  # noqa: BLE001
            raise UnreadableFile(f"{self.path}: not a readable Parquet file ({exc})") from exc
        for batch in reader.iter_batches(batch_size=self.chunk_rows):
            yield batch, []

    def _csv_batches(self) -> Iterator[tuple[pa.RecordBatch, list[MalformedLine]]]:
        malformed: list[MalformedLine] = []

        def skip_invalid(row: pcsv.InvalidRow) -> str:
            malformed.append(MalformedLine(line_number=row.number, text=row.text))
            return "skip"

        try:
            reader = pcsv.open_csv(
                self.path,
                read_options=pcsv.ReadOptions(
                    use_threads=False, block_size=max(self.chunk_rows * _BYTES_PER_ROW_GUESS, 1 << 16)),
                parse_options=pcsv.ParseOptions(invalid_row_handler=skip_invalid),
                convert_options=pcsv.ConvertOptions(
                    column_types={name: pa.string() for name in self.columns},
                    # Only an empty field is missing: "NaN", "NA" or "null" stay text, so they are
                    # quarantined verbatim with a type reason instead of turning into nulls.
                    null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=True),
            )
        except (pa.ArrowException, OSError) as exc:
            raise UnreadableFile(f"{self.path}: not a readable CSV file ({exc})") from exc
        for batch in reader:
            found, malformed = malformed, []
            yield batch, found
        if malformed:
            yield pa.RecordBatch.from_pylist([], schema=reader.schema), malformed


def _rebatch(
    batches: Iterator[tuple[pa.RecordBatch, list[MalformedLine]]], size: int
) -> Iterator[tuple[pa.Table, list[MalformedLine]]]:
    """Regroup reader batches (whose sizes the reader picks) into tables of `size` rows."""
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    malformed: list[MalformedLine] = []
    for batch, bad in batches:
        malformed.extend(bad)
        pending.append(batch)
        pending_rows += batch.num_rows
        while pending_rows >= size:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, size), malformed
            malformed = []
            rest = table.slice(size)
            pending, pending_rows = rest.to_batches(), rest.num_rows
    if pending and (pending_rows or malformed):
        yield pa.Table.from_batches(pending), malformed


def _to_string_frame(table: pa.Table) -> pd.DataFrame:
    """All columns as Arrow-backed trimmed strings, '' turned into null (no copy into Python objects)."""
    columns = {}
    for name, column in zip(table.column_names, table.columns):
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        text = column if pa.types.is_string(column.type) else pc.cast(column, pa.string())
        text = pc.utf8_trim_whitespace(text)
        text = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)
        columns[name] = text.to_pandas(types_mapper=pd.ArrowDtype)
    return pd.DataFrame(columns)
