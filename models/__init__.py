"""Model definitions that api/, serving/ and registry/ import: the classic baselines and their errors."""

from __future__ import annotations


class ModelError(ValueError):
    """Base class for everything the models package raises on purpose (a ValueError: bad input)."""
