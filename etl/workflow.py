"""A fitted graph of column groups and ops: fit on Dask, transform Dask or pandas, save as data.

    cats = ColumnGroup(["user_id", "product_id"], tags=["user"]) >> Categorify(freq_threshold=2)
    price = ColumnGroup(["price"]) >> FillMissing() >> LogOp() >> Normalize()
    workflow = Workflow([cats, price]).fit(train_ddf)
    workflow.save(path); Workflow.load(path).transform(pandas_frame)

Saved workflows are JSON (ops and their parameters) plus Parquet statistics; no code is pickled.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.dataframe as dd
import numpy as np
import pandas as pd

from contracts import WORKFLOW_FILE
from etl import ops_derived  # noqa: F401  (registers the derived ops for Workflow.load)
from etl.errors import WorkflowError
from etl.ops import ROW_KEY_COLUMN, Op

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass
class ColumnGroup:
    """Input columns and the ops applied to them in order; `>>` appends an op."""

    columns: list[str]
    tags: list[str] = field(default_factory=list)
    optional: bool = False  # skipped (not an error) when its inputs are absent, e.g. the label
    ops: list[Op] = field(default_factory=list)

    def __rshift__(self, op: Op) -> "ColumnGroup":
        if not isinstance(op, Op):
            raise WorkflowError(f"only etl ops can follow >>, got {type(op).__name__}")
        return ColumnGroup(list(self.columns), list(self.tags), self.optional, [*self.ops, op])

    def output_columns(self, upto: int | None = None) -> list[str]:
        cols = list(self.columns)
        for op in self.ops[:upto]:
            cols = op.output_columns(cols)
        return cols

    def output_tags(self) -> list[str]:
        base = list(self.ops[-1].output_tags) if self.ops else ["raw"]
        return base + [t for t in self.tags if t not in base]


def _row_keys(df: pd.DataFrame, key: list[str] | None, partition_info: dict | None) -> np.ndarray:
    if key:
        return pd.util.hash_pandas_object(df[key], index=False).to_numpy()
    number = partition_info["number"] if partition_info else 0
    return np.arange(len(df), dtype=np.uint64) + np.uint64(number) * np.uint64(1 << 32)


class Workflow:
    """Column groups fitted together; outputs are the union of every group's output columns."""

    def __init__(self, groups: list[ColumnGroup], row_key: list[str] | None = None) -> None:
        # row_key: columns identifying a row of the fit data; their hash picks its target-encoding
        # fold, so folds do not depend on partitioning or row order. Default: partition position.
        self.groups = list(groups)
        self.row_key = list(row_key) if row_key else None
        seen: dict[str, int] = {}
        for i, group in enumerate(self.groups):
            for col in group.output_columns():
                if col in seen:
                    raise WorkflowError(f"output column {col!r} is produced by groups {seen[col]} "
                                        f"and {i}; rename one (e.g. with Rename)")
                seen[col] = i
        self.fitted = False

    @property
    def output_columns(self) -> list[str]:
        return [c for g in self.groups for c in g.output_columns()]

    @property
    def input_columns(self) -> list[str]:
        return list(dict.fromkeys(c for g in self.groups for c in g.columns))

    def _check_inputs(self, columns: Any) -> list[ColumnGroup]:
        present = set(columns)
        active = []
        for group in self.groups:
            missing = [c for c in group.columns if c not in present]
            if not missing:
                active.append(group)
            elif not group.optional:
                raise WorkflowError(f"input frame lacks columns {missing} needed for "
                                    f"{group.output_columns()}; it has {sorted(present)}")
        return active

    def _run_group(self, df: pd.DataFrame, group: ColumnGroup, upto: int,
                   fit_mode: bool) -> pd.DataFrame:
        cols = list(group.columns)
        frame = df
        out = df[cols]
        for op in group.ops[:upto]:
            out = op.transform(frame, cols, fit_mode=fit_mode)
            cols = op.output_columns(cols)
            frame = frame.assign(**{c: out[c] for c in cols})
        return out[cols]

    def _prefix_partition(self, df: pd.DataFrame, group: ColumnGroup, upto: int,
                          partition_info: dict | None = None) -> pd.DataFrame:
        """The frame with `group`'s columns as they are after its first `upto` ops (fit mode)."""
        df = df.assign(**{ROW_KEY_COLUMN: _row_keys(df, self.row_key, partition_info)})
        out = self._run_group(df, group, upto, fit_mode=True)
        return df.assign(**{c: out[c] for c in out.columns})

    def fit(self, ddf: dd.DataFrame) -> "Workflow":
        """Fit every op on `ddf` (a Dask DataFrame, or pandas which is wrapped as one partition)."""
        if isinstance(ddf, pd.DataFrame):
            ddf = dd.from_pandas(ddf, npartitions=1)
        for group in self._check_inputs(ddf.columns):
            for i, op in enumerate(group.ops):
                if type(op).fit is Op.fit:
                    continue
                cols = group.output_columns(upto=i)
                data = ddf.map_partitions(self._prefix_partition, group, i,
                                          meta=self._prefix_partition(ddf._meta, group, i))
                log.info("fitting %r on %s", op, cols)
                op.fit(data, cols)
        self.fitted = True
        return self

    def _transform_partition(self, df: pd.DataFrame, fit_mode: bool = False,
                             partition_info: dict | None = None) -> pd.DataFrame:
        if fit_mode:
            df = df.assign(**{ROW_KEY_COLUMN: _row_keys(df, self.row_key, partition_info)})
        outs = [self._run_group(df, g, len(g.ops), fit_mode) for g in self._check_inputs(df.columns)]
        return pd.concat(outs, axis=1) if outs else pd.DataFrame(index=df.index)

    def transform(self, data: dd.DataFrame | pd.DataFrame, fit_mode: bool = False
                  ) -> dd.DataFrame | pd.DataFrame:
        """Apply the fitted ops. `fit_mode` encodes rows of the fit data out of fold (see
        TargetEncoding); use it only through `fit_transform` on the frame passed to `fit`."""
        if not self.fitted:
            raise WorkflowError("workflow is not fitted; call fit() or Workflow.load() first")
        if isinstance(data, pd.DataFrame):
            return self._transform_partition(data, fit_mode)
        meta = self._transform_partition(data._meta, fit_mode)
        return data.map_partitions(self._transform_partition, fit_mode, meta=meta)

    def fit_transform(self, ddf: dd.DataFrame) -> dd.DataFrame:
        return self.fit(ddf).transform(ddf, fit_mode=True)

    def column_specs(self, meta: pd.DataFrame | None = None) -> list[dict[str, Any]]:
        """Name, tags, dtype and (for categoricals) cardinality of each output column."""
        specs = []
        for group in self.groups:
            tags = group.output_tags()
            for col in group.output_columns():
                spec: dict[str, Any] = {"name": col, "tags": tags}
                if meta is not None and col in meta:
                    spec["dtype"] = str(meta[col].dtype)
                if "categorical" in tags:
                    spec["cardinality"] = int(group.ops[-1].cardinality(col))
                specs.append(spec)
        return specs

    def save(self, path: Path) -> Path:
        """Write `workflow.json` and `stats/*.parquet` under `path`."""
        if not self.fitted:
            raise WorkflowError("only a fitted workflow can be saved; call fit() first")
        path = Path(path)
        (path / "stats").mkdir(parents=True, exist_ok=True)
        groups = []
        for gi, group in enumerate(self.groups):
            ops = []
            for oi, op in enumerate(group.ops):
                files = {}
                for si, (name, frame) in enumerate(op.get_stats().items()):
                    rel = f"stats/g{gi}_o{oi}_s{si}.parquet"
                    frame.to_parquet(path / rel, index=False)
                    files[name] = rel
                ops.append({"op": type(op).__name__, "params": op.params(), "stats": files})
            groups.append({"columns": group.columns, "tags": group.tags,
                           "optional": group.optional, "ops": ops})
        doc = {"format_version": FORMAT_VERSION, "groups": groups, "row_key": self.row_key,
               "output_columns": self.output_columns}
        (path / WORKFLOW_FILE).write_text(json.dumps(doc, indent=2))
        return path

    @classmethod
    def load(cls, path: Path) -> "Workflow":
        path = Path(path)
        spec_file = path / WORKFLOW_FILE
        if not spec_file.exists():
            raise WorkflowError(f"no {WORKFLOW_FILE} in {path}; is it a saved workflow directory?")
        doc = json.loads(spec_file.read_text())
        if doc.get("format_version") != FORMAT_VERSION:
            raise WorkflowError(f"{spec_file} has format {doc.get('format_version')}, "
                                f"this code reads {FORMAT_VERSION}")
        groups = []
        for g in doc["groups"]:
            ops = []
            for o in g["ops"]:
                if o["op"] not in Op.registry:
                    raise WorkflowError(f"unknown op {o['op']!r} in {spec_file}")
                op = Op.registry[o["op"]](**o["params"])
                op.set_stats({n: pd.read_parquet(path / rel) for n, rel in o["stats"].items()})
                ops.append(op)
            groups.append(ColumnGroup(g["columns"], g["tags"], g["optional"], ops))
        workflow = cls(groups, row_key=doc.get("row_key"))
        workflow.fitted = True
        return workflow
