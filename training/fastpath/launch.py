"""Launch tables of the fast step's Triton kernels: which setting each row width gets.

Kept apart from the kernels so that options (`FastPath`) and benchmarks can name a setting
without importing Triton. The figures behind each choice are in bench/README-train.md.
"""

from __future__ import annotations

from typing import NamedTuple


class InteractionLaunch(NamedTuple):
    """Launch settings of both dot-interaction kernels (`interaction_triton`)."""

    samples: int  # samples per program
    warps: int
    stages: int  # loads of the next samples in flight while one is computed
    forward_columns: int | None  # columns per block of a sample's rows (None: whole rows, one block)
    backward_columns: int | None


class RowwiseLaunch(NamedTuple):
    """Launch settings of the segment-sum + row-wise Adagrad kernel (`rowwise_triton`)."""

    chunk: int  # sorted positions per one-hot product, a power of 2 >= 16
    columns: int  # columns per block of the sum and update
    warps: int
    per_program: int  # chunks per program, pipelined
    stages: int = 3  # pipelining depth of the loop over a program's chunks


# chosen by bench/interaction_sweep.py
INTERACTION_WIDE_ROWS = InteractionLaunch(samples=16, warps=1, stages=3, forward_columns=None, backward_columns=64)
# chosen by bench/interaction_sweep.py
INTERACTION_NARROW_ROWS = InteractionLaunch(samples=8, warps=2, stages=3, forward_columns=None, backward_columns=None)
# chosen by bench/rowwise_sweep.py
ROWWISE_WIDE_ROWS = RowwiseLaunch(chunk=16, columns=32, warps=1, per_program=8)
# chosen by bench/rowwise_sweep.py
ROWWISE_NARROW_ROWS = RowwiseLaunch(chunk=32, columns=16, warps=2, per_program=1)
WIDE_FROM_DIM = 64  # rows of this many columns or more take the wide settings


def interaction_launch(dim: int) -> InteractionLaunch:
    """The dot-interaction kernels' settings for rows of `dim` columns."""
    return INTERACTION_WIDE_ROWS if dim >= WIDE_FROM_DIM else INTERACTION_NARROW_ROWS


def rowwise_launch(dim: int) -> RowwiseLaunch:
    """The row-update kernel's settings for rows of `dim` columns."""
    return ROWWISE_WIDE_ROWS if dim >= WIDE_FROM_DIM else ROWWISE_NARROW_ROWS
