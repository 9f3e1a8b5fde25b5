"""Exceptions raised by the validation stage, all under one `ValidationError` root."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from validation.report import ValidationReport


class ValidationError(Exception):
    """Root of the validation package's errors."""


class InvalidConfig(ValidationError):
    """The `ValidationConfig` or CLI arguments cannot describe a run (e.g. an empty window)."""


class NoInputs(ValidationError):
    """No input file was given or one of them does not exist."""


class ValidationFailed(ValidationError):
    """The run failed closed; every output (valid, quarantine, report, docs) is already written.

    `report` holds the full `ValidationReport`; the message names the reasons and counts.
    """

    def __init__(self, message: str, report: "ValidationReport") -> None:
        super().__init__(message)
        self.report = report
