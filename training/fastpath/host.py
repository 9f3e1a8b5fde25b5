"""Host-memory tweaks of the CPU step: keep freed memory in the heap, put the table on huge pages."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import torch

_HEAP_RETAINED = False


def retain_freed_memory() -> bool:
    """Keep freed memory in this process's heap (glibc), for the CPU step's large tensors.

    PyTorch's CPU allocator has no cache: glibc maps every block above 128 kB-32 MB fresh from
    the kernel and unmaps it when freed, so each step page-faults and zeroes its temporaries
    again (bench/cpu_heap_faults.py counts the faults). Without mmap for large blocks and without
    trimming, freed blocks are reused instead. Process-wide and idempotent; the price is that the
    process keeps its peak heap. False where not glibc.
    """
    global _HEAP_RETAINED
    if _HEAP_RETAINED:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018  # glibc only: musl has no mallopt knobs
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    _HEAP_RETAINED = bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    return _HEAP_RETAINED


def back_with_huge_pages(tensor: torch.Tensor) -> bool:
    """Back the 2 MB-aligned interior of a CPU tensor's memory with huge pages (Linux THP), now.

    The lookup and the row update touch rows scattered over the whole table: with 4 kB pages
    nearly every row is a TLB miss. MADV_HUGEPAGE marks the range and MADV_COLLAPSE (Linux >= 6.1)
    remaps it at once instead of leaving it to khugepaged; the one-off collapse is repaid after
    about a thousand steps (bench/README-train.md, CPU). The data stays in place. False where not
    done (no THP in the kernel, no free huge pages, not Linux).
    """
    if tensor.device.type != "cpu" or not sys.platform.startswith("linux"):
        return False
    page = 2 << 20
    storage = tensor.untyped_storage()
    start = storage.data_ptr()
    end = start + storage.nbytes()
    first, last = -(-start // page) * page, end // page * page
    if last <= first:
        return False
    madv_hugepage, madv_collapse = 14, 25
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        madvise = libc.madvise
    except (OSError, AttributeError):
        return False
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    if madvise(first, last - first, madv_hugepage) != 0:
        return False
    # EINVAL on kernels before 6.1 or EAGAIN without free huge pages: khugepaged still collapses
    # the marked range later.
    return madvise(first, last - first, madv_collapse) == 0
