"""Triton Python-backend model that runs a repository's ONNX model with onnxruntime inside the backend stub.

The local Triton (serving.local_triton) copies this file as `<version>/model.py` of a generated
Python-backend repository, so it must import nothing from this project: the stub process has only
numpy, onnxruntime and Triton's `triton_python_backend_utils`. The ONNX file and the onnxruntime
settings come from the model config's `parameters` (written by serving.triton_repo.build_python_repository).

Dynamic batching hands `execute` several requests at once: their rows are concatenated into one
onnxruntime run and the outputs split back, so concurrent API requests share one inference. Inputs and
outputs are the ones the config names (the ranker's dense, sparse -> score; the sequential model's
items, kinds -> scores), so one file serves every model of the repository.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


def _parameter(config: dict[str, Any], key: str, default: str) -> str:
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


_NUMPY = {"TYPE_FP32": np.float32, "TYPE_INT64": np.int64}


class TritonPythonModel:
    """The config's inputs (B, ...) -> its outputs (B, ...), per request of a batch."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.inputs = [(t["name"], _NUMPY[t["data_type"]]) for t in config["input"]]
        self.outputs = [t["name"] for t in config["output"]]
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
        parts = {name: [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests]
                 for name, _ in self.inputs}
        feeds = {name: np.concatenate(parts[name]).astype(dtype, copy=False) for name, dtype in self.inputs}
        results = self.session.run(self.outputs, feeds)
        results = [r.reshape(len(r), -1) for r in results]  # the ranker's (B,) score becomes (B, 1)
        responses = []
        start = 0
        for part in parts[self.inputs[0][0]]:
            end = start + len(part)
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor(name, np.ascontiguousarray(r[start:end])) for name, r in zip(self.outputs, results)]))
            start = end
        return responses
