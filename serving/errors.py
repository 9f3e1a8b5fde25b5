"""Exception hierarchy of the serving package; the API maps these to problem responses."""

from __future__ import annotations


class ServingError(Exception):
    """Base class of every error raised by `serving`."""


class SchemaError(ServingError):
    """schema.json is missing or lacks the `categorical`/`continuous` lists serving needs."""


class ExportError(ServingError):
    """The model could not be exported to ONNX."""


class ExportParityError(ExportError):
    """The exported graph disagrees with PyTorch beyond the tolerance."""


class RepositoryError(ServingError):
    """A Triton model repository is malformed or missing a model/version."""


class BundleError(ServingError):
    """A serving bundle directory is incomplete or its inputs are unusable."""


class ServerStartError(ServingError):
    """The local Triton server did not become ready; the message quotes its log tail."""


class CandidateError(ServingError):
    """A candidate index was asked for what it cannot give (k < 1, a catalogue without the item columns)."""


class RankerUnavailable(ServingError):
    """Triton cannot be reached or does not serve the model; callers fall back (e.g. popularity)."""

    def __init__(self, url: str, model_name: str, reason: str) -> None:
        super().__init__(f"ranker '{model_name}' at {url} is unavailable: {reason}")
        self.url = url
        self.model_name = model_name
        self.reason = reason
