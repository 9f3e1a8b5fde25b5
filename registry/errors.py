"""Exceptions raised by the registry package; callers catch `RegistryError`."""

from __future__ import annotations


class RegistryError(Exception):
    """Base class of everything the registry package raises."""


class MissingArtifact(RegistryError):
    """A file or directory the logged model must carry was not given or does not exist."""


class ModelNotFound(RegistryError):
    """A registered model, version or alias does not exist in the registry."""


class MetricMissing(RegistryError):
    """A run lacks a metric the promotion gate compares."""
