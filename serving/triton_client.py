"""Scores (dense, sparse) batches on a Triton server over HTTP or gRPC; and the sequential source's sequences."""

from __future__ import annotations

import logging
import threading
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from models.sequential import history_tokens
from serving.errors import ExportError, RankerUnavailable

log = logging.getLogger(__name__)

Protocol = Literal["http", "grpc"]


class TritonClient:
    """Client of the Triton `dlrm` model: dense (B, n_dense), sparse (B, n_sparse) -> scores (B,).

    Requests larger than the model's max_batch_size are split; every transport or server error
    becomes `RankerUnavailable` so callers can fall back. Safe to share between threads (the API's
    gunicorn workers): each thread gets its own connection, as the gevent-based HTTP client is
    not thread-safe.
    """

    def __init__(self, url: str, model_name: str = "dlrm", protocol: Protocol = "http", timeout_s: float = 5.0,
                 model_version: str = "") -> None:
        if protocol not in ("http", "grpc"):
            raise ValueError(f"protocol must be 'http' or 'grpc', got {protocol!r}")
        # tritonclient takes host:port; accept a URL with a scheme too.
        self.url = url.split("://", 1)[-1].rstrip("/")
        self.model_name = model_name
        # "" = the server's default policy (the newest loaded version); a number pins one version, so two
        # versions loaded in one server (the arms of an experiment) are addressed separately.
        self.model_version = str(model_version)
        self.protocol = protocol
        self.timeout_s = timeout_s
        self._local = threading.local()
        self._max_batch_size: int | None = None

    def _module(self) -> Any:
        if self.protocol == "http":
            import tritonclient.http as module
        else:
            import tritonclient.grpc as module
        return module

    def _connect(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            module = self._module()
            if self.protocol == "http":
                client = module.InferenceServerClient(
                    self.url, connection_timeout=self.timeout_s, network_timeout=self.timeout_s
                )
            else:
                client = module.InferenceServerClient(self.url)
            self._local.client = client
        return client

    def _unavailable(self, exc: BaseException) -> RankerUnavailable:
        # A broken connection may leave the client unusable; rebuild it on the next call.
        self.close()
        return RankerUnavailable(self.url, self.model_name, f"{type(exc).__name__}: {exc}")

    def max_batch_size(self) -> int:
        """The served model's max_batch_size, read once from its config."""
        if self._max_batch_size is None:
            try:
                if self.protocol == "http":
                    config = self._connect().get_model_config(self.model_name, self.model_version)
                else:
                    config = self._connect().get_model_config(self.model_name, self.model_version, as_json=True,
                                                              client_timeout=self.timeout_s)["config"]
            except Exception as exc:  # transport errors differ per protocol; all mean "unavailable"
                raise self._unavailable(exc) from exc
            self._max_batch_size = int(config.get("max_batch_size", 0)) or 1
        return self._max_batch_size

    def is_ready(self) -> bool:
        """Whether the server is up and the model loaded (never raises)."""
        try:
            return bool(self._connect().is_server_ready()
                        and self._connect().is_model_ready(self.model_name, self.model_version))
        except Exception:
            self.close()
            return False

    def score(self, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        """Purchase probabilities, float32 (B,), in row order."""
        dense = np.ascontiguousarray(dense, dtype=np.float32)
        sparse = np.ascontiguousarray(sparse, dtype=np.int64)
        if dense.ndim != 2 or sparse.ndim != 2 or len(dense) != len(sparse):
            raise ValueError(f"expected dense (B, n_dense) and sparse (B, n_sparse), got {dense.shape} and {sparse.shape}")
        if len(dense) == 0:
            return np.empty(0, dtype=np.float32)
        step = self.max_batch_size()
        parts = [self._infer(dense[i : i + step], sparse[i : i + step]) for i in range(0, len(dense), step)]
        return np.concatenate(parts)

    def _infer(self, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        return self.infer({"dense": dense, "sparse": sparse}, "score").reshape(-1)

    def infer(self, tensors: dict[str, np.ndarray], output: str) -> np.ndarray:
        """One inference request of named float32/int64 arrays; the named output as numpy."""
        module = self._module()
        inputs = []
        for name, array in tensors.items():
            inputs.append(module.InferInput(name, list(array.shape), "FP32" if array.dtype == np.float32 else "INT64"))
            inputs[-1].set_data_from_numpy(array)
        outputs = [module.InferRequestedOutput(output)]
        try:
            if self.protocol == "http":
                result = self._connect().infer(self.model_name, inputs, model_version=self.model_version, outputs=outputs)
            else:
                result = self._connect().infer(self.model_name, inputs, model_version=self.model_version, outputs=outputs,
                                               client_timeout=self.timeout_s)
        except Exception as exc:  # transport errors differ per protocol; all mean "unavailable"
            raise self._unavailable(exc) from exc
        return result.as_numpy(output)

    def close(self) -> None:
        """Drop this thread's connection (a later call reconnects)."""
        client, self._local.client = getattr(self._local, "client", None), None
        if client is not None:
            try:
                client.close()
            except Exception:  # closing a dead connection may fail; nothing to do about it
                log.debug("closing triton client for %s failed", self.url, exc_info=True)

    def __enter__(self) -> "TritonClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TritonSequentialScorer:
    """The sequential candidate source scored by the Triton model beside the ranker (`sequential`).

    `score_sequences` is what `serving.recommender.Recommender.source_scores` calls: one inference per
    request (a customer's latest `max_len` steps), which Triton's dynamic batcher runs together with
    concurrent customers'. Errors become `RankerUnavailable`, as the ranker's do.
    """

    name = "sequential"

    def __init__(self, client: TritonClient, n_items: int, max_len: int) -> None:
        self.client, self.n_items, self.max_len = client, n_items, max_len

    def score_sequences(self, items: np.ndarray, kinds: np.ndarray) -> np.ndarray:
        """(rows, L) tokens and event codes, latest last -> (rows, n_items) float32 next-item scores."""
        items = np.ascontiguousarray(np.asarray(items, dtype=np.int64)[:, -self.max_len:])
        kinds = np.ascontiguousarray(np.asarray(kinds, dtype=np.int64)[:, -self.max_len:])
        if items.shape != kinds.shape or items.ndim != 2:
            raise ValueError(f"sequences must be two (rows, length) arrays; got {items.shape} and {kinds.shape}")
        if len(items) == 0:
            return np.empty((0, self.n_items), dtype=np.float32)
        step = self.client.max_batch_size()
        parts = [self.client.infer({"items": items[i:i + step], "kinds": kinds[i:i + step]}, "scores")
                 for i in range(0, len(items), step)]
        return np.concatenate(parts).astype(np.float32, copy=False)

    def score(self, history: sp.spmatrix) -> np.ndarray:
        """Without ordered events: the history's items as steps of unknown type (as the ONNX scorer does)."""
        items = history_tokens(history.tocsr(), self.max_len)
        return self.score_sequences(items, np.zeros_like(items))

    def fit(self, interactions: sp.spmatrix) -> "TritonSequentialScorer":
        raise ExportError("a served sequential model is not refitted; train it with training.sequential")

    def close(self) -> None:
        self.client.close()
