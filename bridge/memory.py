"""Freed memory goes back to the system (issue #15: RSS stayed at 1.4 GB after clients left).

glibc serves allocations of at least ``M_MMAP_THRESHOLD`` bytes with ``mmap``
and unmaps them when freed; but by default the threshold follows the largest
chunk freed so far (up to 32 MiB). After one multi-megabyte message, every
later one of that size comes from the heap instead, whose freed pages stay in
the process's RSS for good. :func:`return_freed_memory` fixes the threshold
at 128 KiB (``mallopt(M_MMAP_THRESHOLD)``, which also turns the adjustment
off), so a large message's buffers are returned when it is done. Elsewhere
than glibc it does nothing. ``MALLOC_MMAP_THRESHOLD_`` in the environment
wins (glibc reads it at start; this call is then skipped).
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Final

M_MMAP_THRESHOLD: Final = -3
MMAP_THRESHOLD: Final = 128 * 1024


def return_freed_memory() -> bool:
    """Fix glibc's mmap threshold; whether it was set."""
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
