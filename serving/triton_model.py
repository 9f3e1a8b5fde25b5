"""Triton Python-backend model that runs the repository's ONNX ranker with onnxruntime inside the backend stub.

The local Triton (serving.local_triton) copies this file as `<version>/model.py` of a generated
Python-backend repository, so it must import nothing from this project: the stub process has only
numpy, onnxruntime and Triton's `triton_python_backend_utils`. The ONNX file and the onnxruntime
settings come from the model config's `parameters` (written by serving.triton_repo.build_python_repository).

Dynamic batching hands `execute` several requests at once: their rows are concatenated into one
onnxruntime run and the scores split back, so concurrent API requests share one inference.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


def _parameter(config: dict[str, Any], key: str, default: str) -> str:
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


class TritonPythonModel:
    """dense FP32 (B, n_dense), sparse INT64 (B, n_sparse) -> score FP32 (B, 1), per request of a batch."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        # One server may hold several versions (an experiment's arms): each reads its own file.
        onnx_path = _parameter(config, f"onnx_path_{args.get('model_version', '')}", _parameter(config, "onnx_path", ""))
        options = ort.SessionOptions()
        # The stub shares the machine's cores with the API; one thread per run and no inter-op pool
        # avoid spinning threads that would only contend with the request handlers.
        options.intra_op_num_threads = int(_parameter(config, "intra_op_threads", "1"))
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers: list[Any] = ["CPUExecutionProvider"]
        # A KIND_GPU instance runs on its device when onnxruntime-gpu is installed; the CPU wheel stays on CPU.
        if args.get("model_instance_kind") == "GPU" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(args.get("model_instance_device_id", 0))}))
        try:
            self.session = ort.InferenceSession(onnx_path, options, providers=providers)
        except Exception as exc:  # the message must name the file: the server log is all the caller sees
            raise pb_utils.TritonModelException(f"cannot load ONNX model {onnx_path}: {exc}") from exc

    def execute(self, requests: list[Any]) -> list[Any]:
        dense = [pb_utils.get_input_tensor_by_name(r, "dense").as_numpy() for r in requests]
        sparse = [pb_utils.get_input_tensor_by_name(r, "sparse").as_numpy() for r in requests]
        feeds = {"dense": np.concatenate(dense).astype(np.float32, copy=False),
                 "sparse": np.concatenate(sparse).astype(np.int64, copy=False)}
        (score,) = self.session.run(["score"], feeds)
        score = score.reshape(-1, 1)
        responses = []
        start = 0
        for part in dense:
            end = start + len(part)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("score", score[start:end])]))
            start = end
        return responses
