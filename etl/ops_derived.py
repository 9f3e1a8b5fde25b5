"""Operators that derive new columns: target encoding, group counts, time features, labels."""

from __future__ import annotations

import logging
from typing import Any

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd

from etl.errors import WorkflowError
from etl.ops import FOLD_COLUMN, ROW_KEY_COLUMN, Op, align_dtype

log = logging.getLogger(__name__)


def assign_folds(row_keys: np.ndarray, kfold: int, seed: int = 0) -> np.ndarray:
    """Fold of each row from its row key: the same split every time the fit data is re-read."""
    hashed = pd.util.hash_array(np.asarray(row_keys, dtype=np.uint64), hash_key=f"{seed:016d}"[-16:])
    return (hashed % np.uint64(kfold)).astype(np.int64)


def _add_folds(df: pd.DataFrame, kfold: int, seed: int) -> pd.DataFrame:
    if ROW_KEY_COLUMN not in df:
        raise WorkflowError("TargetEncoding must be fitted through Workflow.fit (row keys missing)")
    return df.assign(**{FOLD_COLUMN: assign_folds(df[ROW_KEY_COLUMN].to_numpy(), kfold, seed)})


class TargetEncoding(Op):
    """Smoothed mean of `target` per value of each column.

    Rows of the fit data are encoded out of fold (k folds by row position), so a row's own label
    never contributes to its encoding; any other frame gets the plain smoothed mean.
    """

    def __init__(self, target: str = "label", kfold: int = 5, p_smooth: float = 20.0,
                 seed: int = 0) -> None:
        if kfold < 1:
            raise WorkflowError("TargetEncoding needs kfold >= 1")
        self.target, self.kfold, self.p_smooth, self.seed = target, kfold, p_smooth, seed
        self.folds: dict[str, pd.DataFrame] = {}  # value, fold, sum, count
        self.global_mean: float | None = None

    def params(self) -> dict[str, Any]:
        return {"target": self.target, "kfold": self.kfold, "p_smooth": self.p_smooth,
                "seed": self.seed}

    def output_columns(self, columns: list[str]) -> list[str]:
        return [f"te_{c}_{self.target}" for c in columns]

    def fit(self, ddf: dd.DataFrame, columns: list[str]) -> None:
        if self.target not in ddf.columns:
            raise WorkflowError(f"TargetEncoding needs the target column {self.target!r} in the fit data")
        meta = _add_folds(ddf._meta, self.kfold, self.seed)
        folded = ddf.map_partitions(_add_folds, self.kfold, self.seed, meta=meta)
        target = folded[self.target].astype("float64")
        aggs = [folded.assign(**{self.target: target}).groupby([c, FOLD_COLUMN])[self.target]
                .agg(["sum", "count"]) for c in columns]
        *stats, mean = dask.compute(*aggs, target.mean())
        self.global_mean = float(mean)
        for col, frame in zip(columns, stats):
            frame = frame.reset_index().rename(columns={col: "value", FOLD_COLUMN: "fold"})
            self.folds[col] = frame.sort_values(["value", "fold"]).reset_index(drop=True)

    def transform(self, df: pd.DataFrame, columns: list[str], fit_mode: bool = False) -> pd.DataFrame:
        if self.global_mean is None:
            raise WorkflowError(f"{self!r} is not fitted; call Workflow.fit first")
        out = {}
        for col, name in zip(columns, self.output_columns(columns)):
            stats = self.folds[col]
            totals = stats.groupby("value")[["sum", "count"]].sum()
            keys = pd.DataFrame({"value": align_dtype(df[col], stats["value"]).to_numpy()})
            merged = keys.merge(totals, left_on="value", right_index=True, how="left")
            sums = merged["sum"].fillna(0.0).to_numpy()
            counts = merged["count"].fillna(0.0).to_numpy()
            if fit_mode and self.kfold > 1:
                if ROW_KEY_COLUMN not in df:
                    raise WorkflowError("fit-mode transform needs row keys; use Workflow.fit_transform")
                keys["fold"] = assign_folds(df[ROW_KEY_COLUMN].to_numpy(), self.kfold, self.seed)
                own = keys.merge(stats, on=["value", "fold"], how="left")
                sums = sums - own["sum"].fillna(0.0).to_numpy()
                counts = counts - own["count"].fillna(0.0).to_numpy()
            enc = (sums + self.p_smooth * self.global_mean) / (counts + self.p_smooth)
            out[name] = enc.astype("float32")
        return pd.DataFrame(out, index=df.index)

    def get_stats(self) -> dict[str, pd.DataFrame]:
        stats = {f"folds_{c}": f for c, f in self.folds.items()}
        stats["global"] = pd.DataFrame({"global_mean": [self.global_mean]})
        return stats

    def set_stats(self, stats: dict[str, pd.DataFrame]) -> None:
        self.global_mean = float(stats["global"]["global_mean"].iloc[0])
        self.folds = {k.removeprefix("folds_"): v for k, v in stats.items() if k.startswith("folds_")}


class JoinGroupby(Op):
    """Rows per value of each column in the fit data (e.g. events per user); unseen values get 0."""

    def __init__(self) -> None:
        self.counts: dict[str, pd.DataFrame] = {}

    def output_columns(self, columns: list[str]) -> list[str]:
        return [f"{c}_count" for c in columns]

    def fit(self, ddf: dd.DataFrame, columns: list[str]) -> None:
        counts = dask.compute(*[ddf[c].value_counts(dropna=True) for c in columns])
        for col, vc in zip(columns, counts):
            frame = pd.DataFrame({"value": vc.index.to_numpy(), "count": vc.to_numpy()})
            self.counts[col] = frame.sort_values("value").reset_index(drop=True)

    def transform(self, df: pd.DataFrame, columns: list[str], fit_mode: bool = False) -> pd.DataFrame:
        out = {}
        for col, name in zip(columns, self.output_columns(columns)):
            if col not in self.counts:
                raise WorkflowError(f"{self!r} is not fitted for {col!r}; call Workflow.fit first")
            stats = self.counts[col]
            lookup = pd.Series(stats["count"].to_numpy(), index=stats["value"].to_numpy())
            mapped = align_dtype(df[col], stats["value"]).map(lookup)
            out[name] = mapped.fillna(0).to_numpy().astype("float64")
        return pd.DataFrame(out, index=df.index)

    def get_stats(self) -> dict[str, pd.DataFrame]:
        return dict(self.counts)

    def set_stats(self, stats: dict[str, pd.DataFrame]) -> None:
        self.counts = dict(stats)


class TimeFeatures(Op):
    """Cyclic hour-of-day and day-of-week features (sin/cos, float32) from a timestamp column."""

    def output_columns(self, columns: list[str]) -> list[str]:
        return [f"{c}_{part}" for c in columns
                for part in ("hour_sin", "hour_cos", "weekday_sin", "weekday_cos")]

    def transform(self, df: pd.DataFrame, columns: list[str], fit_mode: bool = False) -> pd.DataFrame:
        out = {}
        for col in columns:
            ts = pd.to_datetime(df[col], utc=True)
            hour = (ts.dt.hour + ts.dt.minute / 60.0).to_numpy(dtype="float64")
            weekday = ts.dt.weekday.to_numpy(dtype="float64")
            out[f"{col}_hour_sin"] = np.sin(2 * np.pi * hour / 24.0)
            out[f"{col}_hour_cos"] = np.cos(2 * np.pi * hour / 24.0)
            out[f"{col}_weekday_sin"] = np.sin(2 * np.pi * weekday / 7.0)
            out[f"{col}_weekday_cos"] = np.cos(2 * np.pi * weekday / 7.0)
        return pd.DataFrame(out, index=df.index).fillna(0.0).astype("float32")


class LabelFromEventType(Op):
    """1.0 where the event type is a positive one (default `purchase`), else 0.0."""

    output_tags = ("target",)

    def __init__(self, positive: list[str] | None = None, name: str = "label") -> None:
        self.positive = list(positive or ["purchase"])
        self.name = name

    def params(self) -> dict[str, Any]:
        return {"positive": self.positive, "name": self.name}

    def output_columns(self, columns: list[str]) -> list[str]:
        if len(columns) != 1:
            raise WorkflowError(f"LabelFromEventType takes one column, got {columns}")
        return [self.name]

    def transform(self, df: pd.DataFrame, columns: list[str], fit_mode: bool = False) -> pd.DataFrame:
        label = df[columns[0]].isin(self.positive).to_numpy().astype("float32")
        return pd.DataFrame({self.name: label}, index=df.index)


class Rename(Op):
    """Pass columns through unchanged under a new name (e.g. raw ids kept for evaluation)."""

    output_tags = ("raw",)

    def __init__(self, postfix: str = "_raw") -> None:
        self.postfix = postfix

    def params(self) -> dict[str, Any]:
        return {"postfix": self.postfix}

    def output_columns(self, columns: list[str]) -> list[str]:
        return [c + self.postfix for c in columns]

    def transform(self, df: pd.DataFrame, columns: list[str], fit_mode: bool = False) -> pd.DataFrame:
        return pd.DataFrame({c + self.postfix: df[c] for c in columns}, index=df.index)
