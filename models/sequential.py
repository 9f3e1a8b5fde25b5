"""A SASRec-class sequential recommender (Kang & McAuley 2018, "Self-Attentive Sequential Recommendation").

A causal transformer reads a customer's latest events (item ids, oldest first, left-padded to
`max_len`, each with its event type) and its last position's output, dotted with the (tied) item
embeddings, scores every catalogue item as the next one. Plain attention ops (no fused kernels),
so the same module trains on CPU or CUDA and exports to ONNX.

`SequentialScorer` is the candidate source the served recommender holds: the `ItemScorer` fold-in
protocol of `models.classic` plus `score_sequences`, which the recommender calls with the ordered
events it builds per request (`serving.sequences`). `training.sequential` fits it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models import ModelError

_MASKED = -1e9  # additive attention bias of a masked key: finite, so no row ever becomes NaN


@dataclass
class SASRecConfig:
    n_items: int  # catalogue columns; item token = column + 1, 0 = padding
    max_len: int = 50
    dim: int = 64
    heads: int = 2
    layers: int = 2
    dropout: float = 0.2
    n_kinds: int = 8  # event-type codes (contracts.EVENT_CODES) below this; 0 is padding / unknown

    def __post_init__(self) -> None:
        if min(self.n_items, self.max_len, self.dim, self.heads, self.layers) < 1 or self.dim % self.heads:
            raise ModelError(f"SASRecConfig needs positive sizes and dim divisible by heads; got {self}")


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch's CPU ops on `n` threads inside the block. The model is small: one thread avoids the
    spin-waiting of an intra-op pool on a shared 2-core box (10x less CPU per step measured here)."""
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n != before:
            torch.set_num_threads(before)


class _Block(nn.Module):
    """Pre-norm causal self-attention and a position-wise feed-forward, each with a residual."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attention = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads) + bias, dim=-1)
        y = (self.drop(attention) @ v).transpose(1, 2).reshape(b, n, d)
        x = x + self.drop(self.out(y))
        return x + self.drop(self.ff(self.norm2(x)))


class SASRec(nn.Module):
    """items (B, L) int64 tokens, kinds (B, L) int64 event codes -> hidden states (B, L, dim)."""

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.config = config
        self.items = nn.Embedding(config.n_items + 1, config.dim, padding_idx=0)
        self.kinds = nn.Embedding(config.n_kinds, config.dim, padding_idx=0)
        self.positions = nn.Embedding(config.max_len, config.dim)
        self.blocks = nn.ModuleList(_Block(config.dim, config.heads, config.dropout) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.dim)
        self.drop = nn.Dropout(config.dropout)
        nn.init.normal_(self.items.weight, std=config.dim ** -0.5)
        with torch.no_grad():
            self.items.weight[0].zero_()

    def forward(self, items: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
        n = items.shape[1]
        position = torch.arange(n, device=items.device) + (self.config.max_len - n)  # right-aligned
        x = self.items(items) * math.sqrt(self.config.dim) + self.kinds(kinds) + self.positions(position)[None]
        valid = items > 0
        x = self.drop(x) * valid.unsqueeze(-1)
        # A query sees earlier, non-padding keys and always itself (so no row is fully masked).
        step = torch.arange(n, device=items.device)
        causal, eye = step[None, :] <= step[:, None], step[None, :] == step[:, None]  # comparisons export to ONNX
        allowed = causal[None] & (valid[:, None, :] | eye[None])
        bias = torch.where(allowed, 0.0, _MASKED).to(x.dtype)[:, None]  # (B, 1, L, L)
        for block in self.blocks:
            x = block(x, bias)
        return self.norm(x)

    def item_table(self) -> torch.Tensor:
        """(n_items, dim): the output embedding of every catalogue column (tied to the input)."""
        return self.items.weight[1:]

    def next_item_logits(self, items: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
        """(B, n_items): every catalogue item's score as the next event after the sequence."""
        return self(items, kinds)[:, -1] @ self.item_table().T


def history_tokens(rows, max_len: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    """(n_rows, max_len) int64 item tokens (column + 1, left-padded with 0) of a CSR history's columns,
    the last `max_len` in column order: how a scorer reads a history that carries no event order."""
    items = np.zeros((rows.shape[0], max_len), dtype=np.int64)
    for r in range(rows.shape[0]):
        cols = rows.indices[rows.indptr[r]:rows.indptr[r + 1]][-max_len:]
        if len(cols):
            items[r, -len(cols):] = cols + 1
    return items


class NextItemHead(nn.Module):
    """What is exported and served: the full-catalogue next-item scores of a batch of sequences."""

    def __init__(self, model: SASRec) -> None:
        super().__init__()
        self.model = model

    def forward(self, items: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
        return self.model.next_item_logits(items, kinds)


def sampled_softmax_loss(hidden: torch.Tensor, targets: torch.Tensor, table: torch.Tensor,
                         negatives: torch.Tensor | None, log_q: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy of next-item prediction. hidden (M, dim), targets (M,) column indices.

    negatives None: exact softmax over the whole table. Otherwise (N,) shared negative columns drawn
    with log probabilities `log_q` (n_items,): logits are corrected by -log q (Bengio & Senecal;
    Yi et al. 2019) and a negative equal to the row's target is masked out.
    """
    if negatives is None:
        return F.cross_entropy(hidden @ table.T, targets)
    positive = (hidden * table[targets]).sum(-1, keepdim=True) - log_q[targets][:, None]
    negative = hidden @ table[negatives].T - log_q[negatives][None]
    negative = negative.masked_fill(negatives[None] == targets[:, None], _MASKED)
    logits = torch.cat([positive, negative], dim=1)
    return F.cross_entropy(logits, torch.zeros(len(targets), dtype=torch.long, device=hidden.device))


@dataclass(eq=False)
class SequentialScorer:
    """The fitted SASRec as a candidate source: `score_sequences` for ordered events (what the
    recommender passes), `score` for a bag of interactions (their items, unordered, types unknown)."""

    model: SASRec
    batch: int = 512
    name: str = field(default="sequential", init=False)
    n_items: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.model = self.model.cpu().eval()
        self.n_items = self.model.config.n_items

    @property
    def max_len(self) -> int:
        return self.model.config.max_len

    def fit(self, interactions) -> "SequentialScorer":  # type: ignore[no-untyped-def]
        raise ModelError("a sequential scorer is fitted on ordered events: training.sequential.fit_sequential")

    def score_sequences(self, items: np.ndarray, kinds: np.ndarray) -> np.ndarray:
        """(rows, L) tokens and event codes, latest last -> (rows, n_items) float32 next-item scores."""
        items = np.asarray(items, dtype=np.int64)[:, -self.max_len:]
        kinds = np.asarray(kinds, dtype=np.int64)[:, -self.max_len:]
        if items.shape != kinds.shape or items.ndim != 2:
            raise ModelError(f"sequences must be two (rows, length) arrays; got {items.shape} and {kinds.shape}")
        if items.size and (items.min() < 0 or items.max() > self.n_items):
            raise ModelError(f"item tokens must lie in [0, {self.n_items}]")
        out = np.empty((len(items), self.n_items), dtype=np.float32)
        with torch.no_grad(), torch_threads(1):
            for s in range(0, len(items), self.batch):
                out[s:s + self.batch] = self.model.next_item_logits(
                    torch.from_numpy(items[s:s + self.batch]), torch.from_numpy(kinds[s:s + self.batch])).numpy()
        return out

    def score(self, history) -> np.ndarray:  # type: ignore[no-untyped-def]
        rows = history.tocsr()
        if rows.shape[1] != self.n_items:
            raise ModelError(f"history has {rows.shape[1]} item columns; the scorer was fitted on {self.n_items}")
        items = history_tokens(rows, self.max_len)
        return self.score_sequences(items, np.zeros_like(items))  # event types unknown

    def __getstate__(self) -> dict:  # weights and config, not the module object
        return {"config": asdict(self.model.config), "state": {k: v.cpu() for k, v in self.model.state_dict().items()},
                "batch": self.batch}

    def __setstate__(self, state: dict) -> None:
        model = SASRec(SASRecConfig(**state["config"]))
        model.load_state_dict(state["state"])
        self.model, self.batch, self.name = model.eval(), state["batch"], "sequential"
        self.n_items = model.config.n_items
