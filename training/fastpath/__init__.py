"""The fast training step, apart from the model: `TrainStep` and the one options value `FastPath`.

`models/` holds the math; this package runs it fast. `step` (the optimisation step: compile,
CUDA graph, sparse row update), `forward` (the interaction's fused backward, the aligned dense
input), `interaction_triton` and `rowwise_triton` (the CUDA kernels), `launch` (their launch
tables), `host` (the CPU's heap and huge-page tweaks). Importing this package does not import
Triton on CPU-only builds of torch.
"""

from training.fastpath.host import back_with_huge_pages, retain_freed_memory
from training.fastpath.options import FastPath
from training.fastpath.step import CPU_COMPILE_MIN_STEPS, StepOptions, TrainStep, compile_pays_off, native_bf16

__all__ = [
    "CPU_COMPILE_MIN_STEPS",
    "FastPath",
    "StepOptions",
    "TrainStep",
    "back_with_huge_pages",
    "compile_pays_off",
    "native_bf16",
    "retain_freed_memory",
]
