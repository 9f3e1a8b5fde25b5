"""One DLRM optimisation step, fast on CUDA: compiled parts, fused sparse update, one CUDA graph.

The step looks the batch's rows up from a detached table, runs the dense part forward/backward
(bf16 autocast when asked), applies Adam to the MLPs and row-wise Adagrad (or SGD) to the touched
embedding rows. On CUDA the lookup and the dense part are compiled with torch.compile, the
row-wise Adagrad is the fused Triton kernel (`fastpath.rowwise_triton`), learning rates live in
device tensors, and full-size batches replay one captured CUDA graph (no launch gaps, no host
work per kernel). The CPU runs the same math: bf16 GEMMs (oneDNN) where the CPU has native bf16
dot products, fused Adam, the row update through a sort and `embedding_bag`
(`training.optim.sum_by_id`), freed memory kept in the process heap and the table on huge pages
(`fastpath.host`), and the lookup, dense part and (narrow rows) row update compiled only for
runs long enough to repay the compile (`compile_pays_off`). `FastPath` says which of these
techniques run; `train()` and `bench/train_throughput.py` both use this class, so the benchmark
measures the trainer's own step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from training.fastpath.forward import StepForward
from training.fastpath.host import back_with_huge_pages, retain_freed_memory
from training.fastpath.options import FastPath
from training.optim import RowWiseAdagrad, SparseSGD

log = logging.getLogger(__name__)


def native_bf16(device: torch.device) -> bool:
    """True where bf16 GEMMs beat fp32: CUDA GPUs with bf16, CPUs with AVX512-BF16 or AMX.

    On such CPUs oneDNN's bf16 GEMMs run several times the fp32 ones (bench/README-train.md, CPU);
    elsewhere bf16 is emulated and slower than fp32.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, name, lambda: False)() for name in checks)


# Inductor's CPU code speeds the step up by a few percent for a cold compile of many seconds per
# batch shape: below this many planned steps the compile costs more than it saves
# (bench/README-train.md, CPU, has the figures).
CPU_COMPILE_MIN_STEPS = 20_000


def compile_pays_off(device: torch.device, planned_steps: int) -> bool:
    """Whether to torch.compile the step for a run of `planned_steps` steps on `device`.

    CUDA: always (the compile takes seconds against steps of milliseconds, and the CUDA graph
    needs it). CPU: only from `CPU_COMPILE_MIN_STEPS` on, so that short runs (tests, the nightly
    demo) do not spend more time compiling than they train.
    """
    if device.type == "cuda":
        return True
    return device.type == "cpu" and planned_steps >= CPU_COMPILE_MIN_STEPS


@dataclass(frozen=True)
class StepOptions:
    """How one step is built; the defaults of `for_device` are the fast path of each device."""

    lr: float = 1e-3  # MLPs
    embedding_lr: float = 0.05
    optimizer: str = "adam"  # "adam", "adamw", "sgd"
    embedding_optimizer: str = "rowwise_adagrad"  # or "sgd"
    weight_decay: float = 0.0
    bf16: bool = False  # autocast the dense part; on CUDA the lookup and its gradient travel in bf16
    compile: bool = False  # torch.compile the lookup and the dense part
    cuda_graph: bool = False  # capture full-size batches in one CUDA graph (CUDA only)
    autotune: bool = False  # compile the dense part with max-autotune (CUDA; see TrainConfig.autotune)
    graph_warmup: int = 3  # eager steps before capture (real steps on real batches)


class TrainStep:
    """`step(dense (B, n_dense), sparse (B, n_sparse), label (B,)) -> loss` (0-d device tensor).

    Every call is one real optimisation step, including the eager warm-up steps before a CUDA
    graph is captured; batches of another size than the first one (a ragged last batch) run
    eagerly, so they neither recompile nor leave the captured graph.
    """

    def __init__(self, model: nn.Module, options: StepOptions, device: torch.device, fast: FastPath = FastPath()) -> None:
        self.model = model
        self.options = options
        self.fast = fast
        self.device = device
        cuda = device.type == "cuda"
        self.table = model.sparse_arch.embedding.weight
        dense_params = [p for p in model.parameters() if p is not self.table]
        # A device tensor lr lets the captured graph follow the schedule (refilled before replay);
        # fused capturable Adam takes one, SGD reads its lr on the host, so SGD steps run eagerly.
        tensor_lr = cuda and options.optimizer != "sgd"
        self.dense_lr: float | torch.Tensor = torch.tensor(options.lr, device=device) if tensor_lr else options.lr
        if options.optimizer == "sgd":
            self.dense_opt: torch.optim.Optimizer = torch.optim.SGD(
                dense_params, lr=self.dense_lr, weight_decay=options.weight_decay
            )
        else:
            cls = torch.optim.AdamW if options.optimizer == "adamw" else torch.optim.Adam
            # fused: one kernel for all MLP parameters (CPU too), instead of ~10 ops per tensor
            extra = {"fused": True, "capturable": True} if cuda else {"fused": device.type == "cpu"}
            self.dense_opt = cls(dense_params, lr=self.dense_lr, weight_decay=options.weight_decay, **extra)
        self.sparse_opt: RowWiseAdagrad | SparseSGD = (
            RowWiseAdagrad(self.table, options.embedding_lr, fused=None if fast.fused_rowwise else False,
                           compile=options.compile, launch=fast.rowwise_launch)
            if options.embedding_optimizer == "rowwise_adagrad"
            else SparseSGD(self.table, options.embedding_lr)
        )
        self.sparse_lr: float | torch.Tensor = (
            torch.full((1,), options.embedding_lr, device=device) if cuda else options.embedding_lr
        )
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=options.bf16)
        # The lookup's bytes are the step's largest tensors: under bf16 carry them in bf16 (the
        # optimizer still sums and updates in fp32).
        self.lookup_dtype = torch.bfloat16 if options.bf16 else self.table.dtype
        self.huge_pages = False  # whether the table now lies on 2 MB pages (CPU)
        if device.type == "cpu":
            if fast.retain_heap:
                retain_freed_memory()
            if fast.huge_pages:
                self.huge_pages = back_with_huge_pages(self.table)
        self.forward_embedded = StepForward(model, fast)
        interaction = self.forward_embedded.interaction
        # With the one-bmm interaction backward, look rows up into (B, 1 + n_sparse, dim) with an
        # empty leading slot: the backward then writes dense and embedding gradients in one
        # product, and the row-wise Adagrad reads the embedding slots of it where they lie.
        self.lead_slot = interaction is not None and fast.fused_interaction and fast.lead_slot
        # CUDA, rows of >= 64 fp32 (256 B): the interaction's Triton kernels read the rows from the
        # table themselves and the lookup only allocates the (B, F, dim) tensor that receives their
        # gradient, so no looked-up copy is written and read back. Narrower rows read twice at
        # random cost more than the copy's one random read and streamed bf16 passes
        # (bench/README-train.md: the `lookup_rows` variant).
        self.rows_from_table = (
            self.lead_slot and fast.rows_from_table and interaction.uses_triton(device)  # type: ignore[union-attr]
            and self.table.shape[1] >= 64
        )
        self._lookup_fn = self._lookup
        self._dense_fn = self.forward_embedded.forward
        if options.compile:
            self._lookup_fn = torch.compile(self._lookup, dynamic=False)
            # max-autotune times cuBLAS against Triton GEMM templates that take bias + ReLU (and
            # their backward) into the GEMM; "-no-cudagraphs": the step captures its own graph.
            mode = "max-autotune-no-cudagraphs" if options.autotune and cuda else None
            self._dense_fn = torch.compile(self.forward_embedded.forward, dynamic=False, mode=mode)
        self.use_graph = options.cuda_graph and tensor_lr
        self._graph: torch.cuda.CUDAGraph | None = None
        self._fast_batch = -1  # the batch size the compiled code (and graph) serve; others run eagerly
        self._static: tuple[torch.Tensor, ...] = ()
        self._static_loss: torch.Tensor | None = None
        self._eager_full_steps = 0
        self.step_count = 0  # maintained by the caller (trainer), saved in checkpoints
        self._side = torch.cuda.Stream(device) if self.use_graph else None

    def set_lr_factor(self, factor: float) -> None:
        """Scale both learning rates (the schedule's factor for the next step)."""
        lr, sparse_lr = self.options.lr * factor, self.options.embedding_lr * factor
        # Look the tensors up in the groups: loading a checkpoint's state dict replaces them.
        for group in self.dense_opt.param_groups:
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
        if isinstance(self.sparse_lr, torch.Tensor):
            self.sparse_lr.fill_(sparse_lr)
        else:
            self.sparse_lr = sparse_lr

    def _lookup(self, sparse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ids = self.model.sparse_arch.ids(sparse)  # (B, n_sparse)
        if self.rows_from_table:  # only the gradient's carrier: its values are never read
            return ids, ids.new_empty((ids.shape[0], 1 + ids.shape[1], self.table.shape[1]), dtype=self.lookup_dtype)
        rows = F.embedding(ids, self.table.detach())  # (B, n_sparse, dim)
        if self.lead_slot and not (self.device.type == "cuda" or self.options.compile):
            # eager CPU: the cast writes straight into the slots behind the zero one, one pass
            slotted = rows.new_empty(rows.shape[0], 1 + rows.shape[1], rows.shape[2], dtype=self.lookup_dtype)
            slotted[:, 0].zero_()
            slotted[:, 1:].copy_(rows)
            return ids, slotted
        rows = rows.to(self.lookup_dtype)
        if self.lead_slot:  # compiled, the zeros and the gather are one kernel writing (B, F, dim)
            rows = torch.cat([rows.new_zeros(rows.shape[0], 1, rows.shape[2]), rows], dim=1)
        return ids, rows

    def _step(self, dense: torch.Tensor, sparse: torch.Tensor, label: torch.Tensor, fast: bool) -> torch.Tensor:
        lookup = self._lookup_fn if fast else self._lookup
        forward = self._dense_fn if fast else self.forward_embedded.forward
        ids, embedded = lookup(sparse)
        embedded.requires_grad_(True)
        with self.autocast:
            if self.rows_from_table:
                logits = forward(dense, embedded, (self.table.detach(), ids))
            else:
                logits = forward(dense, embedded)
        loss = F.binary_cross_entropy_with_logits(logits.float(), label)
        # Keep gradient buffers alive between steps: a captured graph writes into fixed addresses.
        self.dense_opt.zero_grad(set_to_none=not self.use_graph)
        loss.backward()
        self.dense_opt.step()
        grads = embedded.grad if self.lead_slot else embedded.grad.reshape(ids.numel(), -1)
        self.sparse_opt.step(ids.reshape(-1), grads, self.sparse_lr)
        return loss.detach()

    def __call__(self, dense: torch.Tensor, sparse: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        batch = label.shape[0]
        if not self.use_graph:
            if self._fast_batch == -1:
                self._fast_batch = batch
            return self._step(dense, sparse, label, fast=batch == self._fast_batch)
        if self._graph is not None and batch == self._fast_batch:
            for buffer, value in zip(self._static, (dense, sparse, label)):
                buffer.copy_(value, non_blocking=True)
            self._graph.replay()
            return self._static_loss.clone()  # type: ignore[union-attr]
        if self._graph is not None or (self._fast_batch not in (-1, batch)):
            return self._step(dense, sparse, label, fast=False)  # a ragged last batch
        self._fast_batch = batch
        if self._eager_full_steps < self.options.graph_warmup:
            # Warm-up runs on a side stream, as capture requires (allocator, cuBLAS workspaces).
            self._side.wait_stream(torch.cuda.current_stream(self.device))  # type: ignore[union-attr]
            with torch.cuda.stream(self._side):
                loss = self._step(dense, sparse, label, fast=True)
            torch.cuda.current_stream(self.device).wait_stream(self._side)  # type: ignore[arg-type]
            self._eager_full_steps += 1
            return loss
        self._static = (dense.clone(), sparse.clone(), label.clone())
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._static_loss = self._step(*self._static, fast=True)
        self._graph = graph
        log.info("captured the training step (batch %d) in a CUDA graph", batch)
        graph.replay()  # capture only records: this replay is the step for this batch
        return self._static_loss.clone()  # type: ignore[union-attr]
