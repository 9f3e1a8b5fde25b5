"""`validate_events`: run the REES46 suites over raw files, split good from bad rows, fail closed."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from validation.checkpoints import SuiteRunner
from validation.config import ValidationConfig
from validation.errors import NoInputs, ValidationFailed
from validation.parsing import OUT_OF_RANGE_TIMES, check_frame, parse_frame
from validation.profile import Drift, Profile, drift
from validation.quarantine import QuarantineWriter, ValidWriter, copy_whole_file
from validation.readers import (
    RawChunk, RawFile, UnreadableFile, count_unreadable_rows, is_parquet, parquet_data_bytes_per_row,
)
from validation.report import FileResult, ValidationReport
from validation.suites import REES46, SUITE_VERSION, rees46_row_suite, table_suite

log = logging.getLogger(__name__)
_SCHEMA_REASONS = ("missing_column:", "unexpected_column:")


@dataclass
class _Run:
    """Mutable state of one run, shared by the per-file loop."""

    out_dir: Path
    config: ValidationConfig
    suites: SuiteRunner
    valid: ValidWriter
    quarantine: QuarantineWriter
    profile: Profile = field(default_factory=Profile)
    reasons: Counter = field(default_factory=Counter)
    seen_rows: set[int] = field(default_factory=set)  # 64-bit hashes of parsed rows, for duplicates


def validate_events(inputs: list[Path], out_dir: Path, config: ValidationConfig) -> ValidationReport:
    """Validate raw REES46 event files; write valid/, quarantine/, profile.json, report.json, data_docs/.

    Raises `ValidationFailed` after writing everything when the quarantined fraction is above
    `config.bad_row_threshold`, a table-level expectation fails, or drift passes its limits.
    """
    inputs = [Path(p) for p in inputs]
    if not inputs:
        raise NoInputs("no input files given; pass the raw event files (CSV or Parquet) to validate")
    absent = [str(p) for p in inputs if not p.is_file()]
    if absent:
        raise NoInputs(f"input files not found: {', '.join(absent)}")
    previous = Profile.load(config.previous_profile) if config.previous_profile else None
    out_dir.mkdir(parents=True, exist_ok=True)
    suites = SuiteRunner(out_dir / "data_docs", rees46_row_suite(config.window_start, config.window_end),
                         table_suite(REES46))
    run = _Run(out_dir, config, suites, ValidWriter(out_dir, REES46), QuarantineWriter(out_dir, REES46))
    try:
        files = [_validate_file(run, path, index) for index, path in enumerate(inputs)]
    finally:
        run.valid.close()
        run.quarantine.close()
    _count_unreadable(run, inputs, files)
    run.profile.finish()
    profile_path = out_dir / "profile.json"
    run.profile.save(profile_path)
    return _finish(run, files, previous, profile_path)


def _validate_file(run: _Run, path: Path, index: int) -> FileResult:
    result = FileResult(path=str(path))
    try:
        raw = RawFile(path, run.config.chunk_rows)
        if not raw.columns:
            result.table_failures = ["empty_file"]
        checked_table = False
        schema_reasons: list[str] = []
        for number, chunk in enumerate(raw.chunks()):
            if not checked_table:
                # Columns and non-emptiness are all the table suite looks at; one record shows both.
                result.table_failures = run.suites.table_failures(
                    chunk.frame.head(1), f"{_label(index, path)}-table")
                schema_reasons = [r for r in result.table_failures if r.startswith(_SCHEMA_REASONS)]
                checked_table = True
            _validate_chunk(run, path, chunk, schema_reasons, f"{_label(index, path)}-chunk{number:05d}", result)
        if raw.columns and not checked_table:  # a header and no records
            empty = pd.DataFrame({c: pd.Series(dtype=object) for c in raw.columns})
            result.table_failures = run.suites.table_failures(empty, f"{_label(index, path)}-table")
    except UnreadableFile as exc:
        # Its records are counted once every file is read (`_count_unreadable`), and weigh on the
        # bad fraction like quarantined rows; the file alone does not fail the run.
        log.warning("quarantining unreadable file: %s", exc)
        result.unreadable_reason = str(exc)
        result.file_reasons.append("unreadable_file")
    if "empty_file" in result.table_failures:
        # No record is lost with an empty file, so it need not stop the night: `_finish` fails
        # the run only when no input holds a record.
        result.table_failures.remove("empty_file")
        result.file_reasons.append("empty_file")
    if result.table_failures or result.file_reasons:
        result.copied_to = str(copy_whole_file(path, run.out_dir, index))
    log.info("%s: %d in, %d passed, %d quarantined %s", path, result.n_in, result.n_passed,
             result.n_quarantined, (result.table_failures + result.file_reasons) or "")
    return result


def _count_unreadable(run: _Run, inputs: list[Path], files: list[FileResult]) -> None:
    """Count the records of unreadable files into n_in and n_quarantined (as `n_unreadable`).

    A footerless Parquet is sized by the bytes per row of this run's readable Parquet inputs.
    """
    readable = [parquet_data_bytes_per_row(path) for path, f in zip(inputs, files)
                if f.unreadable_reason is None and f.n_in and is_parquet(path)]
    readable = [b for b in readable if b is not None]
    per_row = sum(readable) / len(readable) if readable else None
    for path, result in zip(inputs, files):
        if result.unreadable_reason is None:
            continue
        count = count_unreadable_rows(path, per_row)
        # Records read before the failure are already counted; what is left counts at least once.
        result.n_unreadable = max(count.rows - result.n_in, 1)
        result.rows_counted_by = count.counted_by
        result.n_in += result.n_unreadable
        result.n_quarantined += result.n_unreadable
        run.reasons["unreadable_file"] += result.n_unreadable


def _label(index: int, path: Path) -> str:
    """Data Docs run name: day partitions all end in events.parquet, so keep the folder too."""
    return f"{index:04d}-{path.parent.name}-{path.name}"


def _validate_chunk(run: _Run, path: Path, chunk: RawChunk, schema_reasons: list[str],
                    run_name: str, result: FileResult) -> None:
    if chunk.malformed:
        run.quarantine.write_malformed(chunk.malformed, path)
        run.reasons["malformed_line"] += len(chunk.malformed)
        result.n_in += len(chunk.malformed)
        result.n_quarantined += len(chunk.malformed)
    raw = chunk.frame
    if raw.empty:
        return
    result.n_in += len(raw)
    if schema_reasons:
        # A file whose columns do not match the contract is not trusted row by row.
        run.quarantine.write_rows(raw, pd.Series(";".join(schema_reasons), index=raw.index), path)
        for reason in schema_reasons:
            run.reasons[reason] += len(raw)
        result.n_quarantined += len(raw)
        return
    raw = raw[list(REES46.columns)]
    parsed = parse_frame(raw, REES46)
    failing = run.suites.failing_rows(
        check_frame(raw, parsed, REES46, run.config.window_start, _mark_duplicates(run, raw, parsed)), run_name)
    per_row: dict[int, list[str]] = {}
    for reason, rows in failing.items():
        run.reasons[reason] += len(rows)
        for row in rows.tolist():
            per_row.setdefault(row, []).append(reason)
    bad = raw.index.isin(list(per_row))
    if bad.any():
        labels = pd.Series({row: ";".join(reasons) for row, reasons in per_row.items()})
        run.quarantine.write_rows(raw[bad], labels, path)
    good = parsed[~bad]
    run.valid.write(good)
    run.profile.add(good)
    result.n_passed += int((~bad).sum())
    result.n_quarantined += int(bad.sum())


def _mark_duplicates(run: _Run, raw: pd.DataFrame, parsed: pd.DataFrame) -> np.ndarray:
    """True for a row whose parsed values equal an earlier row's in this run (the first is kept).

    Parsed, not raw: the same event exported as Parquet and as CSV (other timestamp spelling or
    offset, "12.50" for 12.5) is one event.
    """
    # One joined string per row hashes much faster than pandas' per-column Arrow-extension path.
    # No NUL bytes: the hash reads strings as C strings and would stop at the first one.
    joined = pc.binary_join_element_wise(
        *[_value_key(raw[c], parsed[c], REES46.types[c]) for c in REES46.columns], "\x1f",
        null_handling="replace", null_replacement="\x1e")
    joined = pc.replace_substring(joined, "\x00", "\\x00")  # NULs inside values, same reason
    hashes = pd.util.hash_array(joined.to_numpy(zero_copy_only=False))
    repeated_here = pd.Series(hashes).duplicated(keep="first").to_numpy()
    seen = run.seen_rows
    seen_before = np.fromiter((h in seen for h in hashes.tolist()), dtype=bool, count=len(hashes))
    seen.update(hashes.tolist())
    return repeated_here | seen_before


def _value_key(raw: pd.Series, parsed: pd.Series, kind: pa.DataType) -> pa.Array:
    """One column's values as comparable text: the parsed value (a timestamp as its UTC instant in
    nanoseconds, a float in shortest round-trip form) or, where it does not parse, the raw text
    marked as such, so two different unparseable values never compare equal."""
    text = pa.array(raw, type=pa.string())
    if pa.types.is_string(kind):
        return text
    if pa.types.is_timestamp(kind):  # year 1 and year 2 share a stand-in; their texts differ
        parsed = parsed.where(~parsed.isin(OUT_OF_RANGE_TIMES))
    values = pa.array(parsed, from_pandas=True)
    if pa.types.is_timestamp(kind):
        values = values.cast(pa.int64())
    key = values.cast(pa.string())
    unparsed = pc.binary_join_element_wise("raw:", text, "")
    return pc.if_else(pc.is_null(key), unparsed, key)


def _drift_failures(measured: Drift, config: ValidationConfig) -> list[str]:
    limits = {"event_type_psi": config.max_event_type_psi, "price_psi": config.max_price_psi,
              "new_category_rate": config.max_new_category_rate,
              "row_count_change": config.max_row_count_change}
    values = asdict(measured)
    return [f"drift: {name} {abs(values[name]):.3f} > {limit}" for name, limit in limits.items()
            if abs(values[name]) > limit]


def _finish(run: _Run, files: list[FileResult], previous: Profile | None, profile_path: Path) -> ValidationReport:
    config, out_dir = run.config, run.out_dir
    n_in = sum(f.n_in for f in files)
    n_passed = sum(f.n_passed for f in files)
    n_quarantined = sum(f.n_quarantined for f in files)
    n_unreadable = sum(f.n_unreadable for f in files)
    # Every record is written to exactly one of the two outputs or counted in an unreadable file.
    assert n_in == n_passed + n_quarantined, (n_in, n_passed, n_quarantined)
    assert n_passed == run.valid.rows, (n_passed, run.valid.rows)
    assert n_quarantined == run.quarantine.rows + n_unreadable, (n_quarantined, run.quarantine.rows, n_unreadable)
    table_failures = [f"{f.path}: {reason}" for f in files for reason in f.table_failures]
    measured = drift(previous, run.profile) if previous else None
    if measured:
        table_failures += _drift_failures(measured, config)
    bad_fraction = n_quarantined / n_in if n_in else 0.0
    if n_in == 0:
        # Nothing to train on: empty files fail closed when no other input holds a record.
        table_failures += [f"{f.path}: {reason}" for f in files for reason in f.file_reasons]
        if not table_failures:
            table_failures.append("input: no records in any file")
    problems = []
    if bad_fraction > config.bad_row_threshold:
        top = ", ".join(f"{r}={n}" for r, n in Counter(run.reasons).most_common(5))
        problems.append(f"{n_quarantined} of {n_in} rows quarantined ({bad_fraction:.2%} > threshold "
                        f"{config.bad_row_threshold:.2%}; {top})")
    if table_failures:
        problems.append("table-level failures: " + "; ".join(table_failures))
    message = ("validation failed closed: " + " | ".join(problems) + f"; see {out_dir / 'report.json'} "
               f"and {out_dir / 'quarantine'}") if problems else None
    unreadable = [{"path": f.path, "reason": f.unreadable_reason, "rows": f.n_unreadable,
                   "counted_by": f.rows_counted_by, "copied_to": f.copied_to}
                  for f in files if f.unreadable_reason is not None]
    report = ValidationReport(
        n_in=n_in, n_passed=n_passed, n_quarantined=n_quarantined, n_unreadable=n_unreadable,
        unreadable_files=unreadable, reasons=dict(run.reasons),
        success=not problems, bad_fraction=bad_fraction, bad_row_threshold=config.bad_row_threshold,
        suite_name=REES46.name, suite_version=SUITE_VERSION,
        window_start=config.window_start.isoformat(), window_end=config.window_end.isoformat(),
        table_failures=table_failures, file_reasons=dict(Counter(r for f in files for r in f.file_reasons)),
        files=files, expectations=run.suites.expectations(),
        profile=run.profile.to_json(), drift=asdict(measured) if measured else None,
        failure_message=message, valid_path=str(run.valid.path), quarantine_path=str(run.quarantine.path),
        quarantine_files_dir=str(out_dir / "quarantine" / "files"), profile_path=str(profile_path),
        data_docs_path=str(run.suites.build_docs()), report_path=str(out_dir / "report.json"),
    )
    report.save()
    if message:
        raise ValidationFailed(message, report)
    return report
