"""The training package's exception hierarchy; each message says what to change."""

from __future__ import annotations


class TrainingError(Exception):
    """Base class for everything the training package raises on purpose."""


class DataError(TrainingError):
    """The ETL output (Parquet parts or schema.json) is missing or breaks the contract."""


class ConfigError(TrainingError):
    """A training configuration value is unknown or out of range."""


class CheckpointError(TrainingError):
    """A checkpoint cannot be resumed (missing file or a different model/optimizer setup)."""
