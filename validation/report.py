"""The validation report: counts, reasons, table-level failures, drift, and where outputs went."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class FileResult:
    """What happened to one input file."""

    path: str
    n_in: int = 0
    n_passed: int = 0
    n_quarantined: int = 0
    table_failures: list[str] = field(default_factory=list)  # each one fails the run closed
    # Why the whole file went to quarantine/files/ without failing the run on its own
    # (`empty_file`); an empty file fails the run only when no input holds a record.
    file_reasons: list[str] = field(default_factory=list)
    copied_to: str | None = None  # set when the whole file went to quarantine/files/
    unreadable_reason: str | None = None  # why the file could not be read to its end
    # Records of an unreadable file not read before the failure, counted in n_in and n_quarantined.
    n_unreadable: int = 0
    rows_counted_by: str | None = None  # "parquet_footer", "csv_lines" or "size_estimate"


@dataclass
class ValidationReport:
    """Outcome of `validate_events`.

    `n_in == n_passed + n_quarantined` always holds. `n_quarantined` is the rows in
    quarantine/events.parquet plus `n_unreadable`, the records counted in files that could not
    be read (their bytes are in quarantine/files/; `unreadable_files` says how each was counted).
    """

    n_in: int
    n_passed: int
    n_quarantined: int
    n_unreadable: int  # part of n_quarantined
    # {"path", "reason", "rows", "counted_by", "copied_to"} per unreadable file; counted_by is
    # "parquet_footer" (exact), "csv_lines" (lines after the header) or "size_estimate"
    unreadable_files: list[dict]
    reasons: dict[str, int]  # reason code -> rows carrying it (a row may carry several)
    success: bool
    bad_fraction: float
    bad_row_threshold: float
    suite_name: str
    suite_version: str
    window_start: str
    window_end: str
    table_failures: list[str]  # "<file>: <reason>" and "drift: <what>" entries
    file_reasons: dict[str, int]  # file-level reason (e.g. empty_file) -> files quarantined whole for it
    files: list[FileResult]
    expectations: dict[str, dict]  # reason code -> expectation type and kwargs
    profile: dict
    drift: dict | None
    failure_message: str | None
    valid_path: str
    quarantine_path: str
    quarantine_files_dir: str
    profile_path: str
    data_docs_path: str
    report_path: str

    def to_json(self) -> dict:
        return asdict(self)

    def save(self) -> None:
        Path(self.report_path).write_text(json.dumps(self.to_json(), indent=2, default=str))
