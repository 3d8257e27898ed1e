"""glibc malloc settings for a daemon that must keep a flat RSS for months.

Measured in the soak (`make soak`, 30,000 qps, 20,000 holds): with glibc's defaults RSS rose
about 8 MB in steps after the warm-up, all of it in the brk heap and a worker thread's arena,
while the memory Python itself traced stayed flat. The steps came from large, short-lived
buffers (a hold-journal compaction, a `routes --json` answer): once such a buffer is freed,
glibc raises its mmap threshold to that size (the "dynamic threshold"), so the next ones are
carved from the heap and what they leave behind is rarely given back.

A fixed threshold switches that adjustment off: buffers of MMAP_THRESHOLD and more are mapped
and unmapped whole. Two arenas at most: the interpreter serialises threads on the GIL anyway,
so more arenas buy no speed, only more memory that each keeps for itself.

Not glibc (musl), or no ctypes: nothing is changed, and `tune` says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("resolverd")

M_MMAP_THRESHOLD = -3  # malloc.h
M_ARENA_MAX = -8
MMAP_THRESHOLD = 256 * 1024
ARENA_MAX = 2


def tune() -> bool:
    """Apply the settings above; False (and a debug line) where they cannot be."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        mallopt = libc.mallopt
    except (OSError, AttributeError) as err:
        log.debug("malloc settings left alone (not glibc?): %s", err)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_ARENA_MAX, ARENA_MAX))
    if not ok:
        log.debug("mallopt refused the settings: malloc keeps its defaults")
    return ok
