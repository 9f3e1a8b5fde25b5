"""NVTabular-style column operators: statistics are fitted with Dask, applied per partition.

Each op maps input columns to output columns. `fit(ddf, columns)` computes its statistics as
small pandas frames (kept as Parquet by `Workflow.save`); `transform(df, columns, fit_mode)`
works on one partition through the generic dataframe API (pandas here, cudf partitions too).
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd

from etl.errors import WorkflowError

log = logging.getLogger(__name__)

FOLD_COLUMN = "__fold__"
ROW_KEY_COLUMN = "__row_key__"  # partition number << 32 | position; set by Workflow in fit mode


def align_dtype(values: pd.Series, reference: pd.Series) -> pd.Series:
    """Cast values to the dtype of fitted keys so lookups match (ids sent as floats, strings)."""
    if reference.dtype == object:
        return values.astype(object).where(values.notna(), None)
    if len(reference) and values.dtype != reference.dtype:
        try:
            return values.astype(reference.dtype)
        except (TypeError, ValueError):  # nulls in an integer column: keep them as <NA>
            return values.astype("Int64")
    return values


def stable_hash(series: Any) -> np.ndarray:
    """64-bit hash of values, stable across processes and runs (no Python hash seed)."""
    if hasattr(series, "hash_values"):  # cudf
        return series.hash_values().values_host.astype(np.uint64)
    if series.dtype == object or isinstance(series.dtype, pd.StringDtype):
        series = series.astype(object).map(str)
    return pd.util.hash_pandas_object(series, index=False).to_numpy()


class Op:
    """Base class: a stateless or fitted column operator."""

    registry: ClassVar[dict[str, type["Op"]]] = {}
    output_tags: ClassVar[tuple[str, ...]] = ("continuous",)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Op.registry[cls.__name__] = cls

    def params(self) -> dict[str, Any]:
        """Constructor arguments, JSON-serialisable."""
        return {}

    def output_columns(self, columns: list[str]) -> list[str]:
        return list(columns)

    def fit(self, ddf: dd.DataFrame, columns: list[str]) -> None:
        """Compute statistics from the fit data; stateless ops do nothing."""

    def transform(self, df: pd.DataFrame, columns: list[str], fit_mode: bool = False) -> pd.DataFrame:
        raise NotImplementedError

    # Fitted statistics as named frames, so save/load stores only data, never code.
    def get_stats(self) -> dict[str, pd.DataFrame]:
        return {}

    def set_stats(self, stats: dict[str, pd.DataFrame]) -> None:
        pass

    def cardinality(self, column: str) -> int | None:
        return None

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


def _require_fitted(op: Op, ok: bool) -> None:
    if not ok:
        raise WorkflowError(f"{op!r} is not fitted; call Workflow.fit first or load a fitted workflow")


class Categorify(Op):
    """Encode values as contiguous ints ordered by frequency.

    Index 0 is null/padding; 1..num_buckets hold values seen fewer than `freq_threshold` times
    and values never seen, by hash; frequent values follow from num_buckets + 1.
    """

    output_tags = ("categorical",)

    def __init__(self, freq_threshold: int = 1, num_buckets: int = 4) -> None:
        if freq_threshold < 1 or num_buckets < 0:
            raise WorkflowError("Categorify needs freq_threshold >= 1 and num_buckets >= 0")
        self.freq_threshold = freq_threshold
        self.num_buckets = num_buckets
        self.vocab: dict[str, pd.DataFrame] = {}

    def params(self) -> dict[str, Any]:
        return {"freq_threshold": self.freq_threshold, "num_buckets": self.num_buckets}

    def fit(self, ddf: dd.DataFrame, columns: list[str]) -> None:
        counts = dask.compute(*[ddf[c].value_counts(dropna=True) for c in columns])
        for col, vc in zip(columns, counts):
            vc = vc[vc >= self.freq_threshold]
            frame = pd.DataFrame({"value": vc.index.to_numpy(), "count": vc.to_numpy()})
            # Ties are broken by value so the encoding does not depend on partition order.
            frame = frame.sort_values(["count", "value"], ascending=[False, True], kind="stable")
            self.vocab[col] = frame.reset_index(drop=True)
            log.info("Categorify %s: %d values kept of %d", col, len(frame), len(vc))

    def cardinality(self, column: str) -> int:
        _require_fitted(self, column in self.vocab)
        return 1 + self.num_buckets + len(self.vocab[column])

    def transform(self, df: pd.DataFrame, columns: list[str], fit_mode: bool = False) -> pd.DataFrame:
        out = {}
        for col in columns:
            _require_fitted(self, col in self.vocab)
            vocab = self.vocab[col]["value"]
            values = df[col]
            values = align_dtype(values, vocab)
            codes = pd.Series(np.arange(len(vocab)) + 1 + self.num_buckets, index=vocab.to_numpy())
            mapped = values.map(codes)
            idx = mapped.fillna(0).to_numpy().astype(np.int64)
            unknown = mapped.isna().to_numpy() & values.notna().to_numpy()
            if unknown.any() and self.num_buckets:
                idx[unknown] = 1 + (stable_hash(values[unknown]) % np.uint64(self.num_buckets)
                                    ).astype(np.int64)
            out[col] = idx
        return pd.DataFrame(out, index=df.index)

    def get_stats(self) -> dict[str, pd.DataFrame]:
        return dict(self.vocab)

    def set_stats(self, stats: dict[str, pd.DataFrame]) -> None:
        self.vocab = dict(stats)


class HashBucket(Op):
    """Hash values into `num_buckets` indices 1..num_buckets; null is 0."""

    output_tags = ("categorical",)

    def __init__(self, num_buckets: int) -> None:
        if num_buckets < 1:
            raise WorkflowError("HashBucket needs num_buckets >= 1")
        self.num_buckets = num_buckets

    def params(self) -> dict[str, Any]:
        return {"num_buckets": self.num_buckets}

    def cardinality(self, column: str) -> int:
        return self.num_buckets + 1

    def transform(self, df: pd.DataFrame, columns: list[str], fit_mode: bool = False) -> pd.DataFrame:
        out = {}
        for col in columns:
            hashed = (stable_hash(df[col]) % np.uint64(self.num_buckets)).astype(np.int64) + 1
            out[col] = np.where(df[col].notna().to_numpy(), hashed, 0)
        return pd.DataFrame(out, index=df.index)


class FillMissing(Op):
    """Replace nulls by a constant, or by the fit-data mean when `fill_value` is None."""

    def __init__(self, fill_value: float | None = 0.0) -> None:
        self.fill_value = fill_value
        self.means: dict[str, float] = {}

    def params(self) -> dict[str, Any]:
        return {"fill_value": self.fill_value}

    def fit(self, ddf: dd.DataFrame, columns: list[str]) -> None:
        if self.fill_value is None:
            means = dask.compute(*[ddf[c].mean() for c in columns])
            self.means = {c: float(m) for c, m in zip(columns, means)}

    def transform(self, df: pd.DataFrame, columns: list[str], fit_mode: bool = False) -> pd.DataFrame:
        out = {}
        for col in columns:
            value = self.fill_value if self.fill_value is not None else self.means.get(col)
            _require_fitted(self, value is not None)
            out[col] = df[col].astype("float64").fillna(value)
        return pd.DataFrame(out, index=df.index)

    def get_stats(self) -> dict[str, pd.DataFrame]:
        return {"means": pd.DataFrame({"column": list(self.means), "mean": list(self.means.values())})}

    def set_stats(self, stats: dict[str, pd.DataFrame]) -> None:
        frame = stats.get("means")
        self.means = {} if frame is None else dict(zip(frame["column"], frame["mean"]))


class LogOp(Op):
    """log1p of values clipped at 0 (counts and prices are non-negative; guards bad rows)."""

    def transform(self, df: pd.DataFrame, columns: list[str], fit_mode: bool = False) -> pd.DataFrame:
        return pd.DataFrame({c: np.log1p(df[c].astype("float64").clip(lower=0)) for c in columns},
                            index=df.index)


class Clip(Op):
    """Clip values into [min_value, max_value]."""

    def __init__(self, min_value: float | None = None, max_value: float | None = None) -> None:
        self.min_value, self.max_value = min_value, max_value

    def params(self) -> dict[str, Any]:
        return {"min_value": self.min_value, "max_value": self.max_value}

    def transform(self, df: pd.DataFrame, columns: list[str], fit_mode: bool = False) -> pd.DataFrame:
        return pd.DataFrame({c: df[c].clip(self.min_value, self.max_value) for c in columns},
                            index=df.index)


class Normalize(Op):
    """Standardise to zero mean and unit variance with fit-data statistics; output float32."""

    def __init__(self) -> None:
        self.moments: dict[str, tuple[float, float]] = {}

    def fit(self, ddf: dd.DataFrame, columns: list[str]) -> None:
        stats = dask.compute(*[(ddf[c].mean(), ddf[c].std()) for c in columns])
        for col, (mean, std) in zip(columns, stats):
            std = float(std) if np.isfinite(std) and std > 0 else 1.0
            self.moments[col] = (float(mean) if np.isfinite(mean) else 0.0, std)

    def transform(self, df: pd.DataFrame, columns: list[str], fit_mode: bool = False) -> pd.DataFrame:
        out = {}
        for col in columns:
            _require_fitted(self, col in self.moments)
            mean, std = self.moments[col]
            out[col] = ((df[col].astype("float64") - mean) / std).fillna(0.0).astype("float32")
        return pd.DataFrame(out, index=df.index)

    def get_stats(self) -> dict[str, pd.DataFrame]:
        cols = list(self.moments)
        return {"moments": pd.DataFrame({"column": cols,
                                         "mean": [self.moments[c][0] for c in cols],
                                         "std": [self.moments[c][1] for c in cols]})}

    def set_stats(self, stats: dict[str, pd.DataFrame]) -> None:
        m = stats["moments"]
        self.moments = {c: (float(a), float(b)) for c, a, b in zip(m["column"], m["mean"], m["std"])}
