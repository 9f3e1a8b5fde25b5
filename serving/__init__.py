"""Serving: ONNX export, Triton model repository, local Triton (PyTriton's tritonserver), Triton client, bundles.

Heavy modules (torch, tritonclient) load only when their functions are used, so the API can import
`serving.ranking` and `serving.errors` without them.
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
