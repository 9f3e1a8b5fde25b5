"""Exception hierarchy of the etl package; every error says what to fix."""

from __future__ import annotations


class EtlError(Exception):
    """Base class of all errors raised by the etl package."""


class ReaderError(EtlError):
    """An input file is missing, unreadable, or lacks required columns."""


class WorkflowError(EtlError):
    """A workflow is misconfigured, not fitted, or given a frame it cannot transform."""


class SyntheticDataError(EtlError):
    """A synthetic data configuration is invalid or a manifest cannot be read."""


class SplitError(EtlError):
    """The events do not cover enough days for the train/valid/test time split."""
