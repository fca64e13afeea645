"""Keep a CPU replica's freed tensor memory for reuse, instead of handing it back to the kernel after every call.

glibc's malloc serves blocks above its mmap threshold with fresh ``mmap`` pages, and returns freed memory at
the top of the heap once it exceeds the trim threshold. A CNN's activations are such blocks (8 MB for the
second convolution of 1,024 digits samples), so with the defaults every forward pass page-faults and
zeroes them anew: the digits and mnist5k CNN kernels ran at about a third of their speed
(``benchmarks/cpu_forward.py``).
A replica is a process of its own, so it raises the mmap threshold to glibc's maximum (32 MiB on 64-bit)
and the trim threshold to 1 GiB. ``CPU_FORWARD_ROWS`` (:mod:`rpdist.smoothing.votes`) keeps each
activation of the built-in models below that maximum.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest allowed value on 64-bit (4 MiB × sizeof(long))
TRIM_THRESHOLD = 1024 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Set both thresholds in this process; False (and nothing changed) where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
