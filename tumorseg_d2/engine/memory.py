"""Freed memory kept in the process for reuse (``KEEP_FREED_MEMORY``), where the C library is glibc.

PyTorch's CPU tensors come from ``malloc``. glibc serves each block above its mmap threshold (128
KiB, raised as blocks are freed, to 32 MiB at most) with a fresh mapping and unmaps it on ``free``,
so every page of a large tensor made again in the next iteration is a page fault on first touch.
Training makes and frees the same large tensors every iteration (the gathered RoIAlign's 35 MB
pixel table and its gradient, the batch's feature maps): measured on a 2-core Xeon with AMX, a
fresh 35 MB tensor takes 7.6 ms to fill against 0.8 ms for one already touched, and an iteration of
the bf16 recipe 8% longer (README "Training faster on the CPU"). With the threshold above any
tensor here and the heap never trimmed, freed blocks are reused: the process keeps its peak
memory instead of giving it back between iterations, which its peak already needed.
"""
import ctypes
import ctypes.util
import platform


# mallopt(3) parameters, from <malloc.h>
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
MMAP_THRESHOLD = 1 << 30  # above any tensor of these models


def keep_freed_memory():
    """Have glibc's malloc keep freed memory for the next allocations of this process (and of the
    processes it forks later, such as loader workers): blocks up to 1 GiB come from the heap
    instead of fresh mappings (all blocks, where glibc refuses so high a threshold), and the heap
    is never trimmed. Returns True when glibc took the settings; False, changing nothing, where the
    C library is not glibc (macOS, musl, Windows)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mapped_above = (libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 or
                    libc.mallopt(M_MMAP_MAX, 0) == 1)
    # -1: "disables trimming completely" (mallopt(3))
    return mapped_above and libc.mallopt(M_TRIM_THRESHOLD, -1) == 1
