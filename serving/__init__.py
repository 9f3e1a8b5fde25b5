"""Serving: ONNX export, Triton model repository, local Triton (PyTriton's tritonserver), Triton client, bundles.

Also the request-time path the API calls (`request_path`: history -> candidates -> rank -> popular
fallback, over the per-worker `catalogue` index). Heavy modules (torch, tritonclient) load only when
their functions are used, so the API imports `serving.request_path` and `serving.errors` without them.
"""

from serving.errors import (
    BundleError,
    ExportError,
    ExportParityError,
    RankerUnavailable,
    RepositoryError,
    SchemaError,
    ServerStartError,
    ServingError,
)

__all__ = [
    "BundleError",
    "ExportError",
    "ExportParityError",
    "RankerUnavailable",
    "RepositoryError",
    "SchemaError",
    "ServerStartError",
    "ServingError",
]
