"""The ETL stage: validated events -> impressions -> time split -> fitted workflow -> Parquet.

`run_etl` is what the DAG task, the CLI (`python -m etl run`) and the tests call.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dask.dataframe as dd
import pandas as pd
import pyarrow.parquet as pq

from contracts import SCHEMA_FILE, WORKFLOW_DIR
from etl.errors import EtlError, SplitError
from etl.ops import Categorify, FillMissing, LogOp, Normalize
from etl.ops_derived import JoinGroupby, LabelFromEventType, Rename, TargetEncoding
from etl.readers import read_events_dask
from etl.workflow import ColumnGroup, Workflow

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
CATEGORICAL = ["user_id", "product_id", "category_id", "brand"]
# Funnel depth of each event type: an impression's event_type is its deepest stage.
_STAGE = {"view": 0, "remove_from_cart": 1, "cart": 1, "purchase": 2}
_STAGE_NAME = {0: "view", 1: "cart", 2: "purchase"}
_EVENT_COLUMNS = ["event_time", "event_type", "product_id", "category_id", "brand", "price",
                  "user_id", "user_session"]


@dataclass(frozen=True)
class EtlConfig:
    """How impressions are encoded and split."""

    freq_threshold: int = 2  # ids seen fewer times in train share hashed buckets
    oov_buckets: int = 4  # hashed buckets for rare and unseen ids (indices 1..oov_buckets)
    te_kfold: int = 5  # target-encoding folds on the training rows
    te_smoothing: float = 20.0  # pseudo-count pulling rare ids' purchase rate to the mean
    embedding_dim: int = 16  # written into schema.json for every categorical column
    valid_days: int = 1
    test_days: int = 1
    events_per_partition: int = 2_000_000  # sizes the impression shuffle
    scheduler: str = ""  # dask.distributed scheduler address (tcp://host:port); empty = local threads


@dataclass
class EtlOutputs:
    """Where the stage wrote its outputs, with row counts and the days of each split."""

    train_dir: Path
    valid_dir: Path
    test_dir: Path
    schema_path: Path
    workflow_dir: Path
    rows: dict[str, int] = field(default_factory=dict)
    split_days: dict[str, list[str]] = field(default_factory=dict)


def build_workflow(config: EtlConfig) -> Workflow:
    """The feature workflow: every input is available at serving time except the label."""
    def categorify() -> Categorify:
        return Categorify(freq_threshold=config.freq_threshold, num_buckets=config.oov_buckets)

    def target_rate() -> TargetEncoding:
        return TargetEncoding("purchased", kfold=config.te_kfold, p_smooth=config.te_smoothing)

    groups = [
        ColumnGroup(["user_id"], tags=["user"]) >> categorify(),
        ColumnGroup(["product_id", "category_id", "brand"], tags=["item"]) >> categorify(),
        ColumnGroup(["price"], tags=["item"]) >> FillMissing(0.0) >> LogOp() >> Normalize(),
        ColumnGroup(["user_id"], tags=["user"]) >> JoinGroupby() >> LogOp() >> Normalize(),
        ColumnGroup(["product_id"], tags=["item"]) >> JoinGroupby() >> LogOp() >> Normalize(),
        ColumnGroup(["user_id"], tags=["user"]) >> target_rate() >> Normalize(),
        ColumnGroup(["product_id", "category_id"], tags=["item"]) >> target_rate() >> Normalize(),
        ColumnGroup(["user_id", "product_id"]) >> Rename("_raw"),
        # Sessions group the evaluation's candidates; absent at serving time.
        ColumnGroup(["user_session"], optional=True) >> Rename("_raw"),
        ColumnGroup(["event_type"], optional=True) >> LabelFromEventType(["purchase"], "label"),
    ]
    return Workflow(groups, row_key=["user_session", "product_id"])


def _impression_partition(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(stage=df["event_type"].map(_STAGE).fillna(0).astype("int8"))


def build_impressions(events: dd.DataFrame, split_out: int) -> dd.DataFrame:
    """One row per (user_session, product_id): first event time, product attributes,
    `event_type` = deepest funnel stage, `purchased` = 1 when bought."""
    staged = events.map_partitions(_impression_partition)
    agg = staged.groupby(["user_session", "product_id"]).agg(
        {"event_time": "min", "user_id": "first", "category_id": "first", "brand": "first",
         "price": "first", "stage": "max"}, split_out=split_out)
    agg = agg.reset_index()
    return agg.map_partitions(_finish_impressions)


def _finish_impressions(df: pd.DataFrame) -> pd.DataFrame:
    stage = df["stage"].astype("int64")
    return df.drop(columns="stage").assign(
        event_type=stage.map(_STAGE_NAME).astype(object),
        purchased=(stage == 2).astype("int8"),
        day=df["event_time"].dt.strftime("%Y-%m-%d"),
    )


def split_days(days: list[str], config: EtlConfig) -> dict[str, list[str]]:
    """Last `test_days` days are test, the `valid_days` before are valid, the rest train."""
    need = config.test_days + config.valid_days + 1
    if len(days) < need:
        raise SplitError(f"events cover {len(days)} day(s) {days}; the time split needs at least "
                         f"{need} (train, {config.valid_days} valid, {config.test_days} test)")
    days = sorted(days)
    n_test, n_valid = config.test_days, config.valid_days
    return {"train": days[: -(n_test + n_valid)], "valid": days[-(n_test + n_valid): -n_test],
            "test": days[-n_test:]}


def _schema(workflow: Workflow, meta: pd.DataFrame, config: EtlConfig,
            rows: dict[str, int], days: dict[str, list[str]]) -> dict[str, Any]:
    columns = []
    for spec in workflow.column_specs(meta):
        if "categorical" in spec["tags"]:
            spec["embedding_dim"] = config.embedding_dim
        columns.append(spec)
    by_tag = {tag: [c["name"] for c in columns if tag in c["tags"]]
              for tag in ("categorical", "continuous", "raw")}
    return {"columns": columns, "categorical": by_tag["categorical"],
            "continuous": by_tag["continuous"], "raw": by_tag["raw"], "target": "label",
            "rows": rows, "split_days": days, "etl_config": asdict(config)}


def _write_split(frame: dd.DataFrame, out: Path) -> int:
    if out.exists():
        shutil.rmtree(out)
    frame.to_parquet(out, write_index=False, name_function=lambda i: f"part-{i:05d}.parquet")
    return sum(pq.ParquetFile(p).metadata.num_rows for p in out.glob("part-*.parquet"))


@contextmanager
def _cluster(address: str) -> Iterator[None]:
    """Make the dask.distributed scheduler at `address` the default for computations inside;
    nothing when empty. Its workers share this machine's filesystem (paths are passed as-is)."""
    if not address:
        yield
        return
    from distributed import Client

    with Client(address, timeout="30s") as client:
        log.info("ETL on the dask cluster %s (%d workers)", address, len(client.scheduler_info()["workers"]))
        yield


def run_etl(events: Path, out_dir: Path, config: EtlConfig | None = None) -> EtlOutputs:
    """Aggregate `events` (validated REES46 Parquet/CSV, a file or directory) into impressions,
    split by time, fit the workflow on train and write encoded splits, schema and workflow.
    With `config.scheduler` set, every Dask computation runs on that distributed cluster."""
    config = config or EtlConfig()
    with _cluster(config.scheduler):
        return _run_etl(events, out_dir, config)


def _run_etl(events: Path, out_dir: Path, config: EtlConfig) -> EtlOutputs:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = read_events_dask(events, columns=_EVENT_COLUMNS)
    n_events = int(raw.shape[0].compute())
    if n_events == 0:
        raise EtlError(f"no events in {events}; did validation pass any rows?")
    split_out = max(1, math.ceil(n_events / config.events_per_partition))
    log.info("%d events -> impressions in %d partitions", n_events, split_out)

    # Impressions go through Parquet once so later passes (fit, transform) do not re-shuffle.
    work = out_dir / "_impressions"
    if work.exists():
        shutil.rmtree(work)
    build_impressions(raw, split_out).to_parquet(work, write_index=False, partition_on=["day"])
    days = split_days([p.name.removeprefix("day=") for p in work.glob("day=*")], config)
    log.info("split days: %s", days)

    def load(split: str) -> dd.DataFrame:
        paths = [str(p) for d in days[split] for p in sorted((work / f"day={d}").glob("*.parquet"))]
        return dd.read_parquet(paths)

    workflow = build_workflow(config)
    train = load("train")
    workflow.fit(train)
    encoded = {"train": workflow.transform(train, fit_mode=True),
               "valid": workflow.transform(load("valid")), "test": workflow.transform(load("test"))}
    dirs = {s: out_dir / s for s in SPLITS}
    rows = {}
    for split in SPLITS:
        rows[split] = _write_split(encoded[split], dirs[split])
        log.info("wrote %s: %d impressions", split, rows[split])
    workflow_dir = workflow.save(out_dir / WORKFLOW_DIR)
    schema = _schema(workflow, encoded["train"]._meta, config, rows, days)
    schema_path = out_dir / SCHEMA_FILE
    schema_path.write_text(json.dumps(schema, indent=2))
    shutil.rmtree(work)
    return EtlOutputs(train_dir=dirs["train"], valid_dir=dirs["valid"], test_dir=dirs["test"],
                      schema_path=schema_path, workflow_dir=workflow_dir, rows=rows,
                      split_days=days)

