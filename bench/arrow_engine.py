"""The ETL benchmark's own engine (bench/etl_throughput.py; the pipeline does not use it): wide
Parquet tables (Criteo layout) through Categorify on dictionary pages and FillMissing -> LogOp ->
Normalize with pyarrow.compute, Parquet in, Parquet out, on one node.

Categorical columns are read as dictionary arrays (`read_dictionary=`), so counting and encoding
work on small integer indices and each distinct string is touched once, not once per row. The
encoding is the one `etl.ops.Categorify` gives: 0 null, 1..num_buckets hashed rare values, then
values by descending frequency (ties by value).
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from etl.errors import ReaderError
from etl.ops import stable_hash

log = logging.getLogger(__name__)


@dataclass
class ArrowStats:
    """Fitted statistics: cardinality per categorical, (mean, std) of log1p per float."""

    cardinality: dict[str, int] = field(default_factory=dict)
    moments: dict[str, tuple[float, float]] = field(default_factory=dict)


def _code_table(dictionary: pa.Array, counts: np.ndarray, freq_threshold: int,
                num_buckets: int) -> np.ndarray:
    """Code for each dictionary entry (counts aligned with the dictionary)."""
    kept = np.flatnonzero(counts >= freq_threshold)
    ranking = pa.table({"neg_count": pa.array(-counts[kept]),
                        "value": dictionary.take(pa.array(kept))})
    order = pc.sort_indices(ranking, sort_keys=[("neg_count", "ascending"),
                                                ("value", "ascending")]).to_numpy()
    codes = np.zeros(len(dictionary), dtype=np.int64)
    codes[kept[order]] = np.arange(len(kept), dtype=np.int64) + 1 + num_buckets
    rare = np.flatnonzero(counts < freq_threshold)
    if len(rare) and num_buckets:
        rare_values = pd.Series(dictionary.take(pa.array(rare)).to_numpy(zero_copy_only=False))
        codes[rare] = 1 + (stable_hash(rare_values) % np.uint64(num_buckets)).astype(np.int64)
    return codes


def _dictionary_groups(column: pa.ChunkedArray) -> list[tuple[pa.Array, list[pa.DictionaryArray]]]:
    """Chunks grouped by the dictionary they share: a Parquet row group's batches all point at
    one dictionary buffer, so unifying per row group instead of per batch avoids rehashing it."""
    groups: dict[tuple[int, int], tuple[pa.Array, list[pa.DictionaryArray]]] = {}
    for chunk in column.chunks:
        buffers = chunk.dictionary.buffers()
        key = (buffers[-1].address if buffers[-1] is not None else 0, len(chunk.dictionary))
        groups.setdefault(key, (chunk.dictionary, []))[1].append(chunk)
    return list(groups.values())


def _categorify_column(column: pa.ChunkedArray, freq_threshold: int, num_buckets: int
                       ) -> tuple[pa.Array, int]:
    """Int64 codes of a dictionary column and its cardinality."""
    groups = _dictionary_groups(column)
    local_counts = []
    for dictionary, chunks in groups:
        counts = np.zeros(len(dictionary), dtype=np.int64)
        for chunk in chunks:
            counts += np.bincount(chunk.indices.drop_null().to_numpy(), minlength=len(dictionary))
        local_counts.append(counts)
    if len(groups) == 1:
        vocab, positions = groups[0][0], [np.arange(len(groups[0][0]))]
    else:
        vocab = pc.unique(pa.chunked_array([d for d, _ in groups]))
        positions = [pc.index_in(d, value_set=vocab).to_numpy() for d, _ in groups]
    counts = np.zeros(len(vocab), dtype=np.int64)
    for pos, local in zip(positions, local_counts):
        np.add.at(counts, pos, local)
    codes = _code_table(vocab, counts, freq_threshold, num_buckets)
    parts = []
    for pos, (_, chunks) in zip(positions, groups):
        local_codes = codes[pos]
        for chunk in chunks:
            encoded = local_codes[chunk.indices.fill_null(0).to_numpy()]
            if chunk.null_count:
                encoded[~chunk.is_valid().to_numpy(zero_copy_only=False)] = 0
            parts.append(encoded)
    cardinality = 1 + num_buckets + int((counts >= freq_threshold).sum())
    return pa.array(np.concatenate(parts) if parts else np.zeros(0, np.int64)), cardinality


def _normalized_log(column: pa.ChunkedArray, fill_value: float) -> tuple[np.ndarray, float, float]:
    """float32 z-scores of log1p(max(filled, 0)); numpy in place, one buffer, few passes."""
    values = column.to_numpy()  # a fresh float64 copy with NaN where null
    values = values.astype(np.float64, copy=values.dtype != np.float64)
    np.nan_to_num(values, copy=False, nan=fill_value)
    np.maximum(values, 0.0, out=values)
    np.log1p(values, out=values)
    mean = float(values.mean()) if len(values) else 0.0
    std = float(values.std(ddof=1)) if len(values) > 1 else 1.0
    std = std if std > 0 and np.isfinite(std) else 1.0
    values -= mean
    values /= std
    return values.astype(np.float32), mean, std


def _write_parts(table: pa.Table, target: Path, parts: int, compression: str) -> list[Path]:
    """Row slices written by parallel threads (Parquet encoding releases the GIL)."""
    target.mkdir(parents=True, exist_ok=True)
    step = max(1, -(-table.num_rows // parts))
    paths = [target / f"part-{i:05d}.parquet" for i in range(-(-table.num_rows // step) or 1)]

    def write(i: int) -> None:
        # Codes are already compact ints; dictionary-encoding them again costs more than it saves.
        pq.write_table(table.slice(i * step, step), paths[i], compression=compression,
                       use_dictionary=False)

    with ThreadPoolExecutor(max_workers=parts) as pool:
        list(pool.map(write, range(len(paths))))
    return paths


def fit_transform_parquet(source: Path, target: Path, categorical: list[str],
                          continuous: list[str], freq_threshold: int = 1, num_buckets: int = 0,
                          fill_value: float = 0.0, threads: int | None = None,
                          compression: str = "snappy") -> ArrowStats:
    """Fit on `source` and write its encoded columns to `target/part-*.parquet`.

    Categoricals become int64 codes, continuous columns float32 z-scores of log1p(filled).
    """
    threads = threads or len(os.sched_getaffinity(0)) or 1
    try:
        table = pq.read_table(source, columns=[*categorical, *continuous],
                              read_dictionary=categorical)
    except (OSError, pa.ArrowInvalid) as exc:
        raise ReaderError(f"cannot read {source} with columns {categorical + continuous}: {exc}") from exc
    stats = ArrowStats()

    def categorify(name: str) -> pa.Array:
        column = table.column(name)
        if not pa.types.is_dictionary(column.type):
            column = column.dictionary_encode()
        encoded, stats.cardinality[name] = _categorify_column(column, freq_threshold, num_buckets)
        return encoded

    def normalize(name: str) -> pa.Array:
        values, mean, std = _normalized_log(table.column(name), fill_value)
        stats.moments[name] = (mean, std)
        return pa.array(values)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        cats = list(pool.map(categorify, categorical))
        conts = list(pool.map(normalize, continuous))
    out = pa.table(dict(zip([*categorical, *continuous], [*cats, *conts])))
    paths = _write_parts(out, Path(target), threads, compression)
    log.info("encoded %d rows of %s into %d files under %s", table.num_rows, source, len(paths), target)
    return stats
