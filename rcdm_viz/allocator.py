"""The process's heap policy on CPU: keep freed memory for reuse instead of returning it to the kernel.

Eager torch ops on CPU allocate every result with malloc. glibc serves blocks above a threshold with
mmap and trims the top of the heap after frees, so a multi-megabyte temporary is, each time, fresh
pages that the kernel has to map and zero (one minor page fault per 4 KB page). The synthetic renderer
makes thousands of such temporaries per batch (measured gain: docs/RESULTS.md, "The heap policy"). It is
the same fix PyTorch's CPU performance guide gets from jemalloc or tcmalloc, without a preloaded library.

Process-wide, so it is applied by the command-line entry point (an application's choice), not on import.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 << 20  # blocks up to 128 MB come from the heap (a renderer chunk's temporary: 4-8 MB)
TRIM_THRESHOLD = 256 << 20  # the heap keeps up to 256 MB of free memory at its top
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def user_malloc_settings() -> list[str]:
    """glibc malloc variables set in the environment by the user (the policy then leaves malloc alone)."""
    return [k for k in _USER_SETTINGS if k in os.environ]


def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds (MMAP_THRESHOLD, TRIM_THRESHOLD) for this process.

    Returns True if applied; False (nothing changed) off Linux, on a C library without mallopt, or when
    the user has set glibc's own MALLOC_*_ variables, whose choice wins. The cost is resident memory:
    up to TRIM_THRESHOLD of freed heap stays mapped.
    """
    if not sys.platform.startswith("linux") or user_malloc_settings():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # Both or neither: setting either one stops glibc adjusting the mmap threshold itself, and the trim
    # threshold alone would leave every block above the default 128 KB to mmap (3x slower renders here).
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
