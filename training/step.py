"""One DLRM optimisation step, fast on CUDA: compiled parts, fused sparse update, one CUDA graph.

The step looks the batch's rows up from a detached table, runs the dense part forward/backward
(bf16 autocast when asked), applies Adam to the MLPs and row-wise Adagrad (or SGD) to the touched
embedding rows. On CUDA the lookup and the dense part are compiled with torch.compile, the
row-wise Adagrad is the fused Triton kernel (`training.rowwise_triton`), learning rates live in
device tensors, and full-size batches replay one captured CUDA graph (no launch gaps, no host
work per kernel). The CPU runs the same math eagerly. `train()` and `bench/train_throughput.py`
both use this class, so the benchmark measures the trainer's own step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from training.dlrm import InteractionArch
from training.optim import RowWiseAdagrad, SparseSGD

log = logging.getLogger(__name__)


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
    graph_warmup: int = 3  # eager steps before capture (real steps on real batches)


class TrainStep:
    """`step(dense (B, n_dense), sparse (B, n_sparse), label (B,)) -> loss` (0-d device tensor).

    Every call is one real optimisation step, including the eager warm-up steps before a CUDA
    graph is captured; batches of another size than the captured one run eagerly.
    """

    def __init__(self, model: nn.Module, options: StepOptions, device: torch.device) -> None:
        self.model = model
        self.options = options
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
            extra = {"fused": True, "capturable": True} if cuda else {}
            self.dense_opt = cls(dense_params, lr=self.dense_lr, weight_decay=options.weight_decay, **extra)
        self.sparse_opt: RowWiseAdagrad | SparseSGD = (
            RowWiseAdagrad(self.table, options.embedding_lr)
            if options.embedding_optimizer == "rowwise_adagrad"
            else SparseSGD(self.table, options.embedding_lr)
        )
        self.sparse_lr: float | torch.Tensor = (
            torch.full((1,), options.embedding_lr, device=device) if cuda else options.embedding_lr
        )
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=options.bf16)
        # The lookup's bytes are the step's largest tensors: under bf16 on CUDA carry them in bf16
        # (the optimizer still sums and updates in fp32). On the CPU keep fp32: the coalesce there
        # is faster in fp32 and the GEMMs cast anyway.
        self.lookup_dtype = torch.bfloat16 if (options.bf16 and cuda) else self.table.dtype
        # With the one-bmm interaction backward, look rows up into (B, 1 + n_sparse, dim) with an
        # empty leading slot: the backward then writes dense and embedding gradients in one
        # product, and the row-wise Adagrad reads the embedding slots of it where they lie.
        interaction = getattr(model, "interaction", None)
        self.lead_slot = cuda and isinstance(interaction, InteractionArch) and interaction.fused_backward is not False
        self._lookup_fn = self._lookup
        self._dense_fn = model.forward_embedded
        if options.compile:
            self._lookup_fn = torch.compile(self._lookup, dynamic=False)
            self._dense_fn = torch.compile(model.forward_embedded, dynamic=False)
        self.use_graph = options.cuda_graph and tensor_lr
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_batch = -1
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
        rows = F.embedding(ids, self.table.detach()).to(self.lookup_dtype)  # (B, n_sparse, dim)
        if self.lead_slot:  # compiled, the zeros and the gather are one kernel writing (B, F, dim)
            rows = torch.cat([rows.new_zeros(rows.shape[0], 1, rows.shape[2]), rows], dim=1)
        return ids, rows

    def _step(self, dense: torch.Tensor, sparse: torch.Tensor, label: torch.Tensor, fast: bool) -> torch.Tensor:
        lookup = self._lookup_fn if fast else self._lookup
        forward = self._dense_fn if fast else self.model.forward_embedded
        ids, embedded = lookup(sparse)
        embedded.requires_grad_(True)
        with self.autocast:
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
            return self._step(dense, sparse, label, fast=True)
        if self._graph is not None and batch == self._graph_batch:
            for buffer, value in zip(self._static, (dense, sparse, label)):
                buffer.copy_(value, non_blocking=True)
            self._graph.replay()
            return self._static_loss.clone()  # type: ignore[union-attr]
        if self._graph is not None or (self._graph_batch not in (-1, batch)):
            return self._step(dense, sparse, label, fast=False)  # a ragged last batch
        self._graph_batch = batch
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
