"""Streaming Parquet writers for valid and quarantined rows, and whole-file quarantine copies."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from validation.suites import SourceSchema

META_COLUMNS = (
    pa.field("_reason", pa.string()),  # failing expectation reason codes, ';'-joined
    pa.field("_source_file", pa.string()),
    # 0-based record number among the records the reader parsed from the source file; for a
    # malformed CSV line, its physical line number minus 2 (header is line 1).
    pa.field("_row", pa.int64()),
    pa.field("_raw_line", pa.string()),  # text of a CSV line that did not split into fields
)


class _StreamingParquet:
    def __init__(self, path: Path, schema: pa.Schema) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.schema = schema
        self.rows = 0
        self._writer = pq.ParquetWriter(path, schema)

    def write(self, frame: pd.DataFrame) -> None:
        if len(frame) == 0:
            return
        self._writer.write_table(pa.Table.from_pandas(frame, schema=self.schema, preserve_index=False))
        self.rows += len(frame)

    def close(self) -> None:
        self._writer.close()  # a run with no rows still leaves a readable, empty file


class ValidWriter(_StreamingParquet):
    """`valid/events.parquet`: good rows with the contract's dtypes."""

    def __init__(self, out_dir: Path, source: SourceSchema) -> None:
        super().__init__(out_dir / "valid" / "events.parquet", source.arrow_schema)


class QuarantineWriter(_StreamingParquet):
    """`quarantine/events.parquet`: bad rows, every contract column as string plus reason/provenance."""

    def __init__(self, out_dir: Path, source: SourceSchema) -> None:
        fields = [pa.field(c, pa.string()) for c in source.columns] + list(META_COLUMNS)
        super().__init__(out_dir / "quarantine" / "events.parquet", pa.schema(fields))
        self.columns = list(source.columns)

    def write_rows(self, raw: pd.DataFrame, reasons: pd.Series, source_file: Path) -> None:
        """`raw`: string frame indexed by record number; missing contract columns become null."""
        frame = raw.reindex(columns=self.columns)
        frame["_reason"] = reasons.loc[raw.index].to_numpy()
        frame["_source_file"] = str(source_file)
        frame["_row"] = raw.index.to_numpy(dtype="int64")
        frame["_raw_line"] = None
        self.write(frame)

    def write_malformed(self, lines: list, source_file: Path) -> None:
        frame = pd.DataFrame({c: [None] * len(lines) for c in self.columns})
        frame["_reason"] = "malformed_line"
        frame["_source_file"] = str(source_file)
        # Physical line 2 is record 0 when no value spans lines, the usual case for event exports.
        frame["_row"] = [(-1 if line.line_number is None else line.line_number - 2) for line in lines]
        frame["_raw_line"] = [line.text for line in lines]
        self.write(frame)


def copy_whole_file(path: Path, out_dir: Path, index: int) -> Path:
    """Copy a file that fails table-level checks into `quarantine/files/`, keeping its bytes."""
    target_dir = out_dir / "quarantine" / "files"
    target_dir.mkdir(parents=True, exist_ok=True)
    # Partitioned inputs share a file name (date=.../events.parquet), so prefix the input's position.
    target = target_dir / f"{index:04d}-{path.parent.name}-{path.name}"
    shutil.copy2(path, target)
    return target
