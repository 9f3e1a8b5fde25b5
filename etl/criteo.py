"""Criteo display-ads TSVs (label, I1-I13, C1-C26) -> the ETL output contract, streamed in chunks.

    outputs = run_criteo_etl([Path("day_0.gz"), Path("day_1.gz")], Path("out"), CriteoEtlConfig())
    python -m etl.criteo --input train.txt.gz --out out/ [--split files] [--validate]

The TSVs are read with `etl.readers.iter_criteo` and each chunk is written to a staging Parquet
part of its split, so memory is bounded by the chunk size; the workflow (FillMissing -> LogOp ->
Normalize on I1-I13, Categorify on C1-C26) is then fitted on the train parts with Dask and applied
partition by partition. Criteo files carry no timestamps: either the last `test_fraction` of the
rows is test and the `valid_fraction` before it valid (`split="rows"`), or the last files are
(`split="files"`, e.g. Criteo 1TB `day_23` test, `day_22` valid).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from contracts import SCHEMA_FILE, WORKFLOW_DIR
from etl.errors import EtlError, ReaderError, SplitError
from etl.ops import Categorify, FillMissing, LogOp, Normalize
from etl.pipeline import SPLITS, EtlOutputs
from etl.readers import CRITEO_DENSE, CRITEO_SCHEMA, CRITEO_SPARSE, iter_criteo
from etl.workflow import ColumnGroup, Workflow
from settings import configure_logging

if TYPE_CHECKING:
    from validation.checkpoints import SuiteRunner

log = logging.getLogger(__name__)

TARGET = "label"
_COUNT_BLOCK = 1 << 24
# Fixed schemas: a chunk whose column is all null must not turn that column's type into `null`.
_QUARANTINE_SCHEMA = CRITEO_SCHEMA.append(pa.field("_reason", pa.string())).append(
    pa.field("_source_file", pa.string())).append(pa.field("_row", pa.int64()))


class CriteoRowsRejected(EtlError):
    """Too many Criteo rows failed the Great Expectations row suite; outputs are not written."""


@dataclass(frozen=True)
class CriteoEtlConfig:
    """How Criteo rows are validated, split and encoded."""

    freq_threshold: int = 2  # values seen fewer times in train share the hashed OOV buckets
    # Criteo's long tail holds millions of singletons per column; more buckets keep them apart.
    oov_buckets: int = 16
    embedding_dim: int = 16  # written into schema.json for every categorical column
    split: str = "rows"  # "rows": fractions of the concatenated rows; "files": whole files
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    valid_files: int = 1
    test_files: int = 1
    chunk_rows: int = 500_000  # rows per streamed chunk and per staging/output partition
    validate: bool = False  # run validation.suites.criteo_row_suite on every chunk
    bad_row_threshold: float = 0.05  # quarantined fraction above which the run fails closed

    def __post_init__(self) -> None:
        if self.split not in ("rows", "files"):
            raise SplitError(f"split={self.split!r}; use 'rows' (fractions) or 'files' (last files)")
        if not (0 < self.valid_fraction < 1 and 0 < self.test_fraction < 1
                and self.valid_fraction + self.test_fraction < 1):
            raise SplitError(f"valid_fraction={self.valid_fraction} and test_fraction="
                             f"{self.test_fraction} must be in (0, 1) and leave rows for train")
        if self.valid_files < 1 or self.test_files < 1 or self.chunk_rows < 1:
            raise SplitError("valid_files, test_files and chunk_rows must be >= 1")


def build_criteo_workflow(config: CriteoEtlConfig) -> Workflow:
    """Categorify C1-C26; FillMissing(0) -> LogOp -> Normalize on I1-I13 (LogOp clips at 0 first,
    which folds I2's -1/-2 into 0). The label stays outside: serving sends none."""
    return Workflow([
        ColumnGroup(list(CRITEO_SPARSE)) >> Categorify(freq_threshold=config.freq_threshold,
                                                      num_buckets=config.oov_buckets),
        ColumnGroup(list(CRITEO_DENSE)) >> FillMissing(0.0) >> LogOp() >> Normalize(),
    ])


def count_rows(path: Path) -> int:
    """Lines of a plain or gzipped TSV, counted on the decompressed bytes without parsing."""
    n, last = 0, b"\n"
    with pa.input_stream(str(path), compression="detect") as stream:
        while block := stream.read(_COUNT_BLOCK):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")


def split_ranges(n_rows: int, config: CriteoEtlConfig) -> dict[str, tuple[int, int]]:
    """[start, end) row positions of each split over the concatenated files (rows mode)."""
    n_test = round(n_rows * config.test_fraction)
    n_valid = round(n_rows * config.valid_fraction)
    n_train = n_rows - n_test - n_valid
    if min(n_test, n_valid, n_train) < 1:
        raise SplitError(f"{n_rows} rows cannot be split into train/valid/test with fractions "
                         f"valid={config.valid_fraction}, test={config.test_fraction}")
    return {"train": (0, n_train), "valid": (n_train, n_train + n_valid),
            "test": (n_train + n_valid, n_rows)}


def _split_files(paths: list[Path], config: CriteoEtlConfig) -> dict[str, list[Path]]:
    n_test, n_valid = config.test_files, config.valid_files
    if len(paths) < n_test + n_valid + 1:
        raise SplitError(f"split='files' needs at least {n_test + n_valid + 1} input files "
                         f"(train, {n_valid} valid, {n_test} test); got {len(paths)}")
    return {"train": paths[: -(n_test + n_valid)], "valid": paths[-(n_test + n_valid): -n_test],
            "test": paths[-n_test:]}


@dataclass
class _Staging:
    """Raw rows of each split as Parquet parts, plus what validation rejected."""

    root: Path
    config: CriteoEtlConfig
    rows: Counter = field(default_factory=Counter)
    parts: int = 0
    n_in: int = 0
    reasons: Counter = field(default_factory=Counter)
    n_quarantined: int = 0
    _suites: SuiteRunner | None = None
    _quarantine: pq.ParquetWriter | None = None

    def accept(self, chunk: pd.DataFrame, source: Path, first_row: int) -> pd.DataFrame:
        """The rows of a freshly read chunk that pass the row suite (all of them when not
        validating), indexed by their position in the chunk."""
        self.n_in += len(chunk)
        chunk = chunk.reset_index(drop=True)
        return self._validate(chunk, source, first_row) if self.config.validate else chunk

    def write(self, split: str, rows: pd.DataFrame) -> None:
        if rows.empty:
            return
        target = self.root / split
        target.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pandas(rows, schema=CRITEO_SCHEMA, preserve_index=False),
                       target / f"part-{self.parts:08d}.parquet")
        self.parts += 1
        self.rows[split] += len(rows)

    def _validate(self, chunk: pd.DataFrame, source: Path, first_row: int) -> pd.DataFrame:
        # Imported here: Great Expectations takes seconds to import and most runs skip it.
        from validation.checkpoints import SuiteRunner
        from validation.parsing import check_frame
        from validation.suites import CRITEO, criteo_row_suite, table_suite

        if self._suites is None:
            self._suites = SuiteRunner(self.root.parent / "data_docs", criteo_row_suite(),
                                       table_suite(CRITEO))
        parsed = chunk.astype({c: "float64" for c in CRITEO_DENSE})
        dense = parsed[CRITEO_DENSE]
        # The reader parses the counts as floats; a fractional one is not a Criteo count.
        parsed[CRITEO_DENSE] = dense.where(dense == np.floor(dense))
        # Duplicates are checked within a chunk only: a run-wide set of row hashes would grow
        # with the (billions of) rows and break the bounded-memory promise.
        duplicate = pd.util.hash_pandas_object(chunk, index=False).duplicated().to_numpy()
        no_timestamps = datetime(1970, 1, 1, tzinfo=timezone.utc)  # Criteo has no time column
        frame = check_frame(chunk, parsed, CRITEO, no_timestamps, duplicate)
        failing = self._suites.failing_rows(frame, f"{source.name}-row{first_row:012d}")
        reasons: dict[int, list[str]] = {}
        for reason, rows in failing.items():
            self.reasons[reason] += len(rows)
            for row in rows.tolist():
                reasons.setdefault(row, []).append(reason)
        if not reasons:
            return chunk
        bad = chunk.index.isin(list(reasons))
        rejected = chunk[bad].assign(
            _reason=[";".join(reasons[i]) for i in chunk.index[bad]],
            _source_file=str(source), _row=chunk.index[bad].to_numpy(np.int64) + first_row)
        if self._quarantine is None:
            path = self.root.parent / "quarantine" / "rows.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            self._quarantine = pq.ParquetWriter(path, _QUARANTINE_SCHEMA)
        self._quarantine.write_table(
            pa.Table.from_pandas(rejected, schema=_QUARANTINE_SCHEMA, preserve_index=False))
        self.n_quarantined += int(bad.sum())
        return chunk[~bad]

    def close(self) -> None:
        if self._quarantine is not None:
            self._quarantine.close()
            self._quarantine = None

    def report(self, out_dir: Path) -> None:
        """Write `validation.json` and fail closed when the bad fraction passes the threshold."""
        if not self.config.validate:
            return
        fraction = self.n_quarantined / self.n_in if self.n_in else 0.0
        report = {"n_in": self.n_in, "n_passed": self.n_in - self.n_quarantined,
                  "n_quarantined": self.n_quarantined, "bad_fraction": fraction,
                  "bad_row_threshold": self.config.bad_row_threshold,
                  "reasons": dict(self.reasons),
                  "data_docs": str(self._suites.build_docs()) if self._suites else None}
        (out_dir / "validation.json").write_text(json.dumps(report, indent=2))
        if fraction > self.config.bad_row_threshold:
            top = ", ".join(f"{r}={n}" for r, n in self.reasons.most_common(5))
            raise CriteoRowsRejected(
                f"{self.n_quarantined} of {self.n_in} Criteo rows failed the row suite "
                f"({fraction:.2%} > {self.config.bad_row_threshold:.2%}: {top}); see "
                f"{out_dir / 'quarantine' / 'rows.parquet'} and {out_dir / 'validation.json'}")


def _stage(paths: list[Path], staging: _Staging, config: CriteoEtlConfig) -> dict[str, Any]:
    """Stream every file into staging parts; returns how the rows were split."""
    if config.split == "files":
        by_split = _split_files(paths, config)
        for split, files in by_split.items():
            for path in files:
                position = 0
                for chunk in iter_criteo(path, config.chunk_rows):
                    staging.write(split, staging.accept(chunk, path, position))
                    position += len(chunk)
        return {"mode": "files", "files": {s: [str(p) for p in f] for s, f in by_split.items()}}
    counts = [count_rows(p) for p in paths]
    ranges = split_ranges(sum(counts), config)
    offset = 0
    for path, n_file in zip(paths, counts):
        position = 0
        for chunk in iter_criteo(path, config.chunk_rows):
            good = staging.accept(chunk, path, position)
            rows = good.index.to_numpy() + offset + position  # positions over all files
            for split, (lo, hi) in ranges.items():
                staging.write(split, good[(rows >= lo) & (rows < hi)])
            position += len(chunk)
        if position != n_file:  # e.g. blank lines: positions would no longer match the ranges
            raise EtlError(f"{path} has {n_file} lines but {position} Criteo rows; remove blank "
                           f"lines or use split='files'")
        offset += position
    return {"mode": "rows", "ranges": {s: list(r) for s, r in ranges.items()}}


def _encode(df: pd.DataFrame, workflow: Workflow) -> pd.DataFrame:
    return workflow.transform(df).assign(**{TARGET: df[TARGET].astype("float32")})


def _write_split(encoded: dd.DataFrame, out: Path) -> int:
    if out.exists():
        shutil.rmtree(out)
    encoded.to_parquet(out, write_index=False, name_function=lambda i: f"part-{i:05d}.parquet")
    return sum(pq.ParquetFile(p).metadata.num_rows for p in out.glob("part-*.parquet"))


def _schema(workflow: Workflow, meta: pd.DataFrame, config: CriteoEtlConfig,
            rows: dict[str, int], split: dict[str, Any]) -> dict[str, Any]:
    columns = workflow.column_specs(meta)
    for spec in columns:
        if "categorical" in spec["tags"]:
            spec["embedding_dim"] = config.embedding_dim
    columns.append({"name": TARGET, "tags": ["target"], "dtype": "float32"})
    return {"columns": columns, "categorical": list(CRITEO_SPARSE),
            "continuous": list(CRITEO_DENSE), "raw": [], "target": TARGET, "rows": rows,
            "split": split, "source": "criteo", "etl_config": asdict(config)}


def run_criteo_etl(tsv_paths: list[Path], out_dir: Path,
                   config: CriteoEtlConfig | None = None) -> EtlOutputs:
    """Split Criteo TSVs (in the given order), fit the workflow on train, write the encoded
    `{train,valid,test}/part-*.parquet`, `schema.json` and `workflow/` under `out_dir`."""
    config = config or CriteoEtlConfig()
    paths = [Path(p) for p in tsv_paths]
    if not paths:
        raise EtlError("no Criteo TSV given; pass one or more files (plain or .gz)")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ReaderError(f"Criteo files not found: {', '.join(missing)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / "_staging"
    for stale in (work, out_dir / "quarantine", out_dir / "data_docs"):
        shutil.rmtree(stale, ignore_errors=True)
    (out_dir / "validation.json").unlink(missing_ok=True)
    staging = _Staging(work, config)
    try:
        split = _stage(paths, staging, config)
    finally:
        staging.close()
    staging.report(out_dir)
    empty = [s for s in SPLITS if not staging.rows[s]]
    if empty:
        raise SplitError(f"splits {empty} received no rows from {[str(p) for p in paths]}")
    log.info("staged %s rows (%s)", dict(staging.rows), split["mode"])

    def load(name: str) -> dd.DataFrame:
        return dd.read_parquet(sorted(str(p) for p in (work / name).glob("part-*.parquet")))

    workflow = build_criteo_workflow(config).fit(load("train"))
    dirs = {s: out_dir / s for s in SPLITS}
    rows, meta = {}, None
    for name in SPLITS:
        raw = load(name)
        meta = _encode(raw._meta, workflow)
        rows[name] = _write_split(raw.map_partitions(_encode, workflow, meta=meta), dirs[name])
        log.info("wrote %s: %d rows", name, rows[name])
    workflow_dir = workflow.save(out_dir / WORKFLOW_DIR)
    schema_path = out_dir / SCHEMA_FILE
    schema_path.write_text(json.dumps(_schema(workflow, meta, config, rows, split), indent=2))
    shutil.rmtree(work)
    return EtlOutputs(train_dir=dirs["train"], valid_dir=dirs["valid"], test_dir=dirs["test"],
                      schema_path=schema_path, workflow_dir=workflow_dir, rows=rows)


# Synthetic Criteo-format data with a planted click model, for tests and demos.
_CARDINALITIES = (1400, 550, 10_000, 2000, 300, 20, 10_000, 600, 3, 5000, 5000, 3000, 3000,
                  25, 5000, 8000, 10, 4000, 2000, 4, 8000, 15, 15, 5000, 100, 3000)
_CAT_MISSING = {"C19": 0.4, "C20": 0.4, "C22": 0.75, "C25": 0.4, "C26": 0.4}
_INT_MISSING = (0.45, 0.0, 0.2, 0.2, 0.03, 0.22, 0.04, 0.0, 0.04, 0.45, 0.04, 0.77, 0.2)
# The click logit depends on these columns only: per-value effects and log-count slopes.
_SIGNAL_CATEGORICAL = ("C6", "C9", "C14", "C2")
_SIGNAL_DENSE = {"I1": 0.6, "I5": -0.4}
_BASE_LOGIT = -0.8  # about a 25% click rate, as in Criteo Kaggle


def _hex_vocabulary(cardinality: int, salt: int) -> np.ndarray:
    """Distinct 8-hex-character strings (an odd multiplier is a bijection mod 2**32)."""
    codes = (np.arange(cardinality, dtype=np.uint64) * np.uint64(2654435761)
             + np.uint64(salt * 97_531)) % np.uint64(2**32)
    return np.array([f"{int(c):08x}" for c in codes], dtype=object)


def generate_criteo_tsv(path: Path, rows: int, seed: int = 0) -> Path:
    """Write `rows` Criteo-format lines (gzipped when `path` ends in .gz) and return `path`.

    Categoricals follow Zipf frequencies over 8-hex-character vocabularies, the counts are
    log-normal with Criteo-like missing rates (I2 has a few -1s), and the label is Bernoulli of
    a logistic model of C2, C6, C9, C14, I1 and I5, so a model can learn a planted signal.
    """
    rng = np.random.default_rng(seed)
    frame: dict[str, Any] = {}
    logit = np.full(rows, _BASE_LOGIT)
    for j, name in enumerate(CRITEO_DENSE):
        counts = np.floor(rng.lognormal(1.0 + 0.2 * j, 1.3, rows))
        if name == "I2":
            counts[rng.random(rows) < 0.02] = -1
        if name in _SIGNAL_DENSE:
            logs = np.log1p(np.maximum(counts, 0))
            logit += _SIGNAL_DENSE[name] * (logs - logs.mean()) / logs.std()
        frame[name] = pd.array(counts.astype(np.int64), dtype="Int64")
        frame[name][rng.random(rows) < _INT_MISSING[j]] = pd.NA
    for j, (name, cardinality) in enumerate(zip(CRITEO_SPARSE, _CARDINALITIES)):
        weights = np.arange(1, cardinality + 1, dtype=np.float64) ** -1.1
        index = rng.choice(cardinality, size=rows, p=weights / weights.sum())
        if name in _SIGNAL_CATEGORICAL:
            logit += rng.normal(0.0, 1.0, cardinality)[index]
        values = _hex_vocabulary(cardinality, j)[index]
        values[rng.random(rows) < _CAT_MISSING.get(name, 0.0)] = None
        frame[name] = values
    label = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    table = pd.DataFrame({TARGET: label, **frame})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, sep="\t", header=False, index=False, na_rep="", compression="infer")
    log.info("wrote %d Criteo rows (click rate %.3f) to %s", rows, label.mean(), path)
    return path


def main(argv: list[str] | None = None) -> int:
    """`python -m etl.criteo --input TSV... --out DIR`; prints the outputs as JSON."""
    defaults = CriteoEtlConfig()
    parser = argparse.ArgumentParser(prog="python -m etl.criteo", description=__doc__.split("\n")[0])
    parser.add_argument("--input", type=Path, nargs="+", required=True,
                        help="Criteo TSVs (plain or .gz), in time order")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--split", choices=("rows", "files"), default=defaults.split)
    parser.add_argument("--valid-fraction", type=float, default=defaults.valid_fraction)
    parser.add_argument("--test-fraction", type=float, default=defaults.test_fraction)
    parser.add_argument("--freq-threshold", type=int, default=defaults.freq_threshold)
    parser.add_argument("--oov-buckets", type=int, default=defaults.oov_buckets)
    parser.add_argument("--embedding-dim", type=int, default=defaults.embedding_dim)
    parser.add_argument("--chunk-rows", type=int, default=defaults.chunk_rows)
    parser.add_argument("--validate", action="store_true", help="run the Criteo GE row suite")
    parser.add_argument("--bad-row-threshold", type=float, default=defaults.bad_row_threshold)
    parser.add_argument("--generate", type=int, metavar="ROWS",
                        help="first write ROWS synthetic lines to the (single) --input path")
    args = parser.parse_args(argv)
    configure_logging()
    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # its INFO is start-up noise
    try:
        if args.generate:
            if len(args.input) != 1:
                parser.error("--generate writes one file; give exactly one --input")
            generate_criteo_tsv(args.input[0], args.generate)
        config = CriteoEtlConfig(
            freq_threshold=args.freq_threshold, oov_buckets=args.oov_buckets,
            embedding_dim=args.embedding_dim, split=args.split, valid_fraction=args.valid_fraction,
            test_fraction=args.test_fraction, chunk_rows=args.chunk_rows, validate=args.validate,
            bad_row_threshold=args.bad_row_threshold)
        outputs = run_criteo_etl(args.input, args.out, config)
    except EtlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: str(v) if isinstance(v, Path) else v
                      for k, v in asdict(outputs).items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
