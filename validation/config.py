"""Run configuration of the validation stage (window, thresholds, drift limits, chunking)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from validation.errors import InvalidConfig


def as_utc(value: datetime) -> datetime:
    """Naive datetimes are taken to be UTC, like the raw events themselves."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


@dataclass(frozen=True)
class ValidationConfig:
    """What counts as a good event and when a run fails closed.

    Events must fall in `[window_start, window_end)`. The run fails when the quarantined fraction
    is strictly above `bad_row_threshold`, on any table-level failure, or when drift against
    `previous_profile` passes one of the `max_*` limits.
    """

    window_start: datetime
    window_end: datetime
    bad_row_threshold: float = 0.05
    previous_profile: Path | None = None
    max_event_type_psi: float = 0.2  # PSI > 0.2 is the usual "significant shift" line
    max_price_psi: float = 0.2
    max_new_category_rate: float = 0.10  # share of valid rows whose category_id was never seen
    max_row_count_change: float = 0.5  # |n - n_prev| / n_prev of valid rows
    chunk_rows: int = 1_000_000

    def __post_init__(self) -> None:
        object.__setattr__(self, "window_start", as_utc(self.window_start))
        object.__setattr__(self, "window_end", as_utc(self.window_end))
        if self.window_end <= self.window_start:
            raise InvalidConfig(
                f"window_end {self.window_end.isoformat()} must be after window_start "
                f"{self.window_start.isoformat()}"
            )
        if not 0.0 <= self.bad_row_threshold <= 1.0:
            raise InvalidConfig(f"bad_row_threshold must be in [0, 1], got {self.bad_row_threshold}")
        if self.chunk_rows < 1:
            raise InvalidConfig(f"chunk_rows must be positive, got {self.chunk_rows}")
