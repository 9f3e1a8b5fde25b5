"""Train the sequential source (models.sequential.SASRec) on next-item prediction over customers' event sequences.

Each customer's distinct steps (serving.sequences.distinct_steps, time order) are cut from the
latest backwards into windows of `max_len` targets; every position predicts the next step (any
event type) from the ones before it. The loss is an exact softmax over the catalogue when it has at
most `negatives` items, else a sampled softmax over `negatives` shared items drawn by popularity^0.75
with the log-q correction. CUDA when present, CPU otherwise; seeded, so a CPU run repeats exactly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from models.classic import index_of
from models.sequential import SASRec, SASRecConfig, SequentialScorer, sampled_softmax_loss, torch_threads
from serving.sequences import distinct_steps, event_codes
from training.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SequentialConfig:
    """Chosen on the synthetic shop (bench/quality.py), reported on every data set."""

    max_len: int = 20  # latest steps read (serving.sequences keeps SEQUENCE_LENGTH; the model takes the tail)
    dim: int = 32
    heads: int = 1
    layers: int = 1
    dropout: float = 0.2
    # chosen on the plain synthetic shop's inner session split (each user's second-to-last session):
    # 5 / 10 / 20 epochs gave the source alone NDCG@10 0.053 / 0.076 / 0.072 (README, the session split)
    epochs: int = 10
    min_steps: int = 200  # small data sets get more epochs, up to this many optimiser steps in all
    batch_size: int = 256
    learning_rate: float = 5e-3
    weight_decay: float = 0.0
    negatives: int = 256  # catalogues up to this size get the exact softmax, larger ones a sampled one
    seed: int = 0
    device: str | None = None  # None: cuda when available, else cpu
    cpu_threads: int = 1  # torch threads when training on CPU (see models.sequential.torch_threads)


@dataclass(frozen=True)
class Windows:
    inputs: np.ndarray  # (n, max_len) tokens
    kinds: np.ndarray  # (n, max_len) event codes of the inputs
    targets: np.ndarray  # (n, max_len) next tokens, 0 where nothing is to be predicted


def training_windows(events: pd.DataFrame, items: np.ndarray, max_len: int) -> Windows:
    """Next-step windows of every customer in `events` over the catalogue `items` (sorted ids)."""
    ev = events.sort_values(["user_id", "event_time"], kind="stable")
    _, rows = np.unique(ev["user_id"].to_numpy(np.int64), return_inverse=True)
    rows, cols, kinds = distinct_steps(rows.astype(np.int64), index_of(items, ev["product_id"].to_numpy(np.int64)),
                                       event_codes(ev["event_type"]))
    if len(rows) < 2:
        raise DataError(f"{len(rows)} usable events: too few to train a sequential model")
    counts = np.bincount(rows)
    ends = np.cumsum(counts)
    from_end = ends[rows] - 1 - np.arange(len(rows))  # 0 for a customer's latest step
    # Step at from_end r is the target at slot max_len-1-(r % max_len) of window r // max_len; its
    # input there is the step before it (from_end r+1), which the customer's first step lacks.
    windows_per_user = (counts + max_len - 1) // max_len
    first_window = np.concatenate([[0], np.cumsum(windows_per_user)[:-1]])
    window = first_window[rows] + from_end // max_len
    slot = max_len - 1 - from_end % max_len
    has_input = from_end < counts[rows] - 1
    n = int(windows_per_user.sum())
    inputs, codes, targets = (np.zeros((n, max_len), dtype=np.int64) for _ in range(3))
    src = np.flatnonzero(has_input)
    targets[window[src], slot[src]] = cols[src] + 1
    inputs[window[src], slot[src]] = cols[src - 1] + 1
    codes[window[src], slot[src]] = kinds[src - 1]
    keep = (targets > 0).any(axis=1)
    return Windows(inputs[keep], codes[keep], targets[keep])


def fit_sequential(events: pd.DataFrame, items: np.ndarray, config: SequentialConfig = SequentialConfig()
                   ) -> SequentialScorer:
    """A `SequentialScorer` over the catalogue `items` trained on `events` (nothing else is read)."""
    items = np.asarray(items, dtype=np.int64)
    data = training_windows(events, items, config.max_len)
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    # Its own random stream: fitting it leaves the caller's (the ranker's initialisation) untouched.
    with torch_threads(config.cpu_threads if device.type == "cpu" else torch.get_num_threads()), \
            torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        return _fit(data, items, config, device)


def _fit(data: Windows, items: np.ndarray, config: SequentialConfig, device: torch.device) -> SequentialScorer:
    torch.manual_seed(config.seed)
    generator = np.random.default_rng(config.seed)
    model = SASRec(SASRecConfig(len(items), config.max_len, config.dim, config.heads, config.layers,
                                config.dropout)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    counts = np.bincount(data.targets[data.targets > 0] - 1, minlength=len(items)).astype(np.float64)
    sampled = len(items) > config.negatives
    q = (counts + 1.0) ** 0.75
    q /= q.sum()
    log_q = torch.from_numpy(np.log(q)).float().to(device)
    q_torch = torch.from_numpy(q).float().to(device)
    inputs, kinds, targets = (torch.from_numpy(a).to(device) for a in (data.inputs, data.kinds, data.targets))
    torch_generator = torch.Generator(device=device).manual_seed(config.seed)
    batches = -(-len(inputs) // config.batch_size)
    for epoch in range(max(config.epochs, -(-config.min_steps // batches))):
        model.train()
        order = torch.from_numpy(generator.permutation(len(inputs))).to(device)
        total, steps = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            rows = order[start:start + config.batch_size]
            hidden = model(inputs[rows], kinds[rows])
            target = targets[rows]
            mask = target > 0
            negatives = (torch.multinomial(q_torch, config.negatives, replacement=True, generator=torch_generator)
                         if sampled else None)
            loss = sampled_softmax_loss(hidden[mask], target[mask] - 1, model.item_table(), negatives, log_q)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, steps = total + float(loss.detach()), steps + 1
        log.info("sequential epoch %d: loss %.4f (%d windows, %s)", epoch, total / max(steps, 1), len(inputs), device)
    return SequentialScorer(model.cpu().eval())
