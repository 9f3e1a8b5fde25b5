"""Data validation stage: Great Expectations suites over raw events, quarantine, fail-closed gate."""

from validation.config import ValidationConfig
from validation.errors import InvalidConfig, NoInputs, ValidationError, ValidationFailed
from validation.profile import Drift, Profile
from validation.report import FileResult, ValidationReport
from validation.runner import validate_events
from validation.suites import CRITEO, REES46, SOURCES, SUITE_VERSION, criteo_row_suite, rees46_row_suite, table_suite

__all__ = [
    "CRITEO", "REES46", "SOURCES", "SUITE_VERSION", "Drift", "FileResult", "InvalidConfig", "NoInputs",
    "Profile", "ValidationConfig", "ValidationError", "ValidationFailed", "ValidationReport",
    "criteo_row_suite", "rees46_row_suite", "table_suite", "validate_events",
]
