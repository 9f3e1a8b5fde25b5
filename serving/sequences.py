"""Customers' latest events in order, the sequential source's input: one builder for the API and the evaluator.

A sequence row holds the last `length` events of one customer, oldest first and left-padded:
item tokens (catalogue column + 1, 0 = padding) and event codes (`contracts.EVENT_CODES`).
Repeats of the same product one after the other (a view, then a cart of it) collapse into the last
of them, so the row spends its length on distinct steps. Products outside the catalogue are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from contracts import EVENT_CODES
from models.classic import index_of

SEQUENCE_LENGTH = 50  # events kept per customer; a model with a shorter max_len reads the latest of them


@dataclass(frozen=True)
class Sequences:
    items: np.ndarray  # (n_rows, length) int64 tokens, latest last
    kinds: np.ndarray  # (n_rows, length) int64 event codes

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, rows: np.ndarray | slice) -> "Sequences":
        return Sequences(self.items[rows], self.kinds[rows])

    def reindexed(self, columns: np.ndarray) -> "Sequences":
        """Tokens moved to another catalogue: old column j -> columns[j] (-1: unknown there, dropped)."""
        new = np.where(self.items > 0, columns[np.maximum(self.items - 1, 0)] + 1, 0)
        return Sequences(new, np.where(new > 0, self.kinds, 0))


def event_codes(event_types: np.ndarray | pd.Series) -> np.ndarray:
    """Event type names -> codes (0 for an unknown type)."""
    values = np.asarray(event_types, dtype=object)
    return np.fromiter((EVENT_CODES.get(str(t), 0) for t in values), dtype=np.int64, count=len(values))


def distinct_steps(rows: np.ndarray, cols: np.ndarray, kinds: np.ndarray) -> tuple[np.ndarray, ...]:
    """Events in time order (grouped by row) without unknown products/types and without consecutive repeats."""
    keep = (rows >= 0) & (cols >= 0) & (kinds > 0)
    rows, cols, kinds = rows[keep], cols[keep], kinds[keep]
    last_of_run = np.ones(len(rows), dtype=bool)
    last_of_run[:-1] = (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1])
    return rows[last_of_run], cols[last_of_run], kinds[last_of_run]


def build_sequences(rows: np.ndarray, cols: np.ndarray, kinds: np.ndarray, n_rows: int,
                    length: int = SEQUENCE_LENGTH) -> Sequences:
    """Sequences of `n_rows` customers from events sorted by (row, time): rows/cols -1 are dropped."""
    rows, cols, kinds = distinct_steps(np.asarray(rows, np.int64), np.asarray(cols, np.int64),
                                       np.asarray(kinds, np.int64))
    items = np.zeros((n_rows, length), dtype=np.int64)
    codes = np.zeros((n_rows, length), dtype=np.int64)
    if len(rows):
        counts = np.bincount(rows, minlength=n_rows)
        ends = np.cumsum(counts)
        from_end = ends[rows] - 1 - np.arange(len(rows))  # 0 for a row's latest event
        keep = from_end < length
        items[rows[keep], length - 1 - from_end[keep]] = cols[keep] + 1
        codes[rows[keep], length - 1 - from_end[keep]] = kinds[keep]
    return Sequences(items, codes)


def sequence_of(catalogue: np.ndarray, product_ids: np.ndarray, event_types: np.ndarray,
                length: int = SEQUENCE_LENGTH) -> Sequences:
    """One customer's sequence from their events in time order (the API's `History.events`)."""
    cols = index_of(catalogue, np.asarray(product_ids, dtype=np.int64))
    return build_sequences(np.zeros(len(cols), dtype=np.int64), cols, event_codes(event_types), 1, length)


def sequences_of_events(events: pd.DataFrame, users: np.ndarray, catalogue: np.ndarray,
                        length: int = SEQUENCE_LENGTH) -> Sequences:
    """Rows for `users` (sorted ids) from an event frame (user_id, product_id, event_type, event_time)."""
    ev = events.sort_values(["user_id", "event_time"], kind="stable")
    rows = index_of(np.asarray(users, dtype=np.int64), ev["user_id"].to_numpy(np.int64))
    cols = index_of(catalogue, ev["product_id"].to_numpy(np.int64))
    order = np.argsort(np.where(rows >= 0, rows, len(users)), kind="stable")  # user order, time order within
    return build_sequences(rows[order], cols[order], event_codes(ev["event_type"])[order], len(users), length)
