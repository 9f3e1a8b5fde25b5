"""Profile of the valid events (event mix, prices, categories, rows) and drift against a previous run."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from validation.errors import InvalidConfig
from validation.suites import EVENT_TYPES

# Coarse price buckets for PSI (catalogue currency); fine log buckets only for quantiles.
PRICE_EDGES = (0.0, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0)
_FINE_EDGES = np.concatenate([[0.0], np.geomspace(0.01, 1e7, 1000)])
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
_PSI_FLOOR = 1e-4  # keeps log() finite when a bucket is empty on one side


@dataclass
class Profile:
    """Summary of one run's valid rows, saved as `profile.json` for the next run to compare with."""

    row_count: int = 0
    event_types: dict[str, int] = field(default_factory=lambda: {t: 0 for t in EVENT_TYPES})
    price_buckets: list[int] = field(default_factory=lambda: [0] * len(PRICE_EDGES))
    price_quantiles: dict[str, float] = field(default_factory=dict)
    categories: dict[str, int] = field(default_factory=dict)  # category_id -> rows
    _fine: np.ndarray = field(default_factory=lambda: np.zeros(len(_FINE_EDGES), dtype=np.int64))

    def add(self, valid: pd.DataFrame) -> None:
        """Fold in a chunk of valid rows (typed columns)."""
        self.row_count += len(valid)
        for kind, n in valid["event_type"].value_counts().items():
            self.event_types[str(kind)] = self.event_types.get(str(kind), 0) + int(n)
        price = valid["price"].to_numpy(dtype=np.float64)
        coarse = np.searchsorted(PRICE_EDGES, price, side="right") - 1
        self.price_buckets = list(np.add(self.price_buckets, np.bincount(coarse, minlength=len(PRICE_EDGES))))
        self._fine += np.bincount(np.searchsorted(_FINE_EDGES, price, side="right") - 1,
                                  minlength=len(_FINE_EDGES))
        for category, n in valid["category_id"].dropna().astype("int64").value_counts().items():
            key = str(category)
            self.categories[key] = self.categories.get(key, 0) + int(n)

    def finish(self) -> None:
        """Quantiles from the fine histogram (bucket lower edges: exact to ~1.5% relative)."""
        total = int(self._fine.sum())
        if total == 0:
            self.price_quantiles = {}
            return
        cumulative = np.cumsum(self._fine)
        self.price_quantiles = {
            f"p{int(q * 100)}": float(_FINE_EDGES[int(np.searchsorted(cumulative, q * total))])
            for q in QUANTILES
        }

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("_fine")
        data["price_buckets"] = [int(n) for n in self.price_buckets]
        data["price_edges"] = list(PRICE_EDGES)
        return data

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2, sort_keys=True))

    @classmethod
    def load(cls, path: Path) -> "Profile":
        try:
            data = json.loads(path.read_text())
            if tuple(data["price_edges"]) != PRICE_EDGES:
                raise InvalidConfig(f"{path}: price buckets differ from this suite's; re-profile the baseline")
            return cls(row_count=int(data["row_count"]), event_types=dict(data["event_types"]),
                       price_buckets=list(data["price_buckets"]),
                       price_quantiles=dict(data["price_quantiles"]), categories=dict(data["categories"]))
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise InvalidConfig(f"previous profile {path} is unreadable ({exc}); pass a profile.json "
                                "written by an earlier validation run") from exc


@dataclass(frozen=True)
class Drift:
    """Drift of this run's profile against the previous run's."""

    event_type_psi: float
    price_psi: float
    new_category_rate: float  # share of this run's valid rows in categories the previous run lacked
    row_count_change: float  # (n - n_prev) / n_prev


def psi(expected: list[int] | np.ndarray, actual: list[int] | np.ndarray) -> float:
    """Population stability index of two count vectors over the same buckets."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.sum() == 0 or a.sum() == 0:
        return 0.0 if e.sum() == a.sum() else math.inf
    e = np.maximum(e / e.sum(), _PSI_FLOOR)
    a = np.maximum(a / a.sum(), _PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def drift(previous: Profile, current: Profile) -> Drift:
    kinds = sorted(set(previous.event_types) | set(current.event_types))
    new_rows = sum(n for c, n in current.categories.items() if c not in previous.categories)
    return Drift(
        event_type_psi=psi([previous.event_types.get(k, 0) for k in kinds],
                           [current.event_types.get(k, 0) for k in kinds]),
        price_psi=psi(previous.price_buckets, current.price_buckets),
        new_category_rate=new_rows / current.row_count if current.row_count else 0.0,
        row_count_change=((current.row_count - previous.row_count) / previous.row_count
                          if previous.row_count else (0.0 if current.row_count == 0 else math.inf)),
    )
