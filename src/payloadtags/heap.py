"""glibc's heap, told to keep what a request frees for the next one.

A page of 500 objects and a chunk of a list make a few text buffers of 100-300 kB each and free them
before the next request. glibc serves such buffers from the top of its heap (once its mmap threshold
has grown past them) and gives the top back to the kernel whenever more than its trim threshold lies
free there (by default twice the mmap threshold, adjusted as the process runs). Whether a server's
requests cross that line depends on the heap's layout, so one server process shrinks and regrows its
heap several times per page (brk calls and page faults: a kernel time per page two to three times as
large) and another, running the same code, never does. Fixed thresholds take that chance away:
buffers under ``MMAP_THRESHOLD`` come from the heap, and up to ``TRIM_THRESHOLD`` of free heap is
kept rather than given back and taken again (docs/benchmarks-history.md, "Seventh round").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from collections.abc import Mapping

# mallopt's parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 1 << 20
TRIM_THRESHOLD = 8 << 20

# What an operator may have set for glibc's allocator already: that is left as it is.
_OPERATOR_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")
# The same three as tunables. The allocator's others (arena_max, hugetlb, tcache_count, ...) say nothing
# of how much free heap the process keeps, any more than MALLOC_ARENA_MAX does.
_OPERATOR_TUNABLES = ("glibc.malloc.trim_threshold", "glibc.malloc.mmap_threshold", "glibc.malloc.top_pad")


def keep_freed_heap(environ: Mapping[str, str] | None = None) -> str | None:
    """Sets glibc's mmap and trim thresholds: None once they are set; else why they are not (the C
    library is not glibc, or the operator tuned its allocator already: `operators_settings`), a line
    the start logs once, as nothing else says it. Called at start, it looks the C library up in any
    case, for `give_back_free_heap` too."""
    libc = _glibc()
    # First: without glibc nothing reads the MALLOC_* names an image's environment may still carry.
    if libc is None:
        return (
            "the C library is not glibc: its allocator's thresholds are its own, and a quiet server "
            "gives no free heap back"
        )
    tuned = operators_settings(environ)
    if tuned:
        return (
            f"glibc's allocator left as {', '.join(tuned)} set it: no thresholds fixed, and a quiet "
            "server gives no free heap back"
        )
    if not (
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    ):
        return "glibc's mallopt refused the heap's thresholds: the allocator keeps its own"
    return None


def give_back_free_heap(environ: Mapping[str, str] | None = None) -> bool:
    """glibc's ``malloc_trim(0)``: the free pages inside its heap, not only at its top, go back to the
    kernel (`quiet.WhenQuiet`, once lists have stopped: the chunks they freed below what stays in use
    are otherwise kept for the life of the process). False where the C library is not glibc, or the
    operator tuned its allocator (`operators_settings`): how much free heap the process keeps is then
    the operator's to say (a trim threshold or top pad set high is meant to keep it), and a trim to
    nothing each quiet spell would undo it."""
    libc = _glibc()
    if libc is None or operators_settings(environ):
        return False
    libc.malloc_trim(0)
    return True


def operators_settings(environ: Mapping[str, str] | None = None) -> list[str]:
    """What the operator set for glibc's allocator in ``environ`` (the process's by default): the
    allocator is then left as it is, its thresholds unset and its free heap not trimmed."""
    environ = os.environ if environ is None else environ
    names = [name for name in _OPERATOR_SETTINGS if name in environ]
    if any(_a_threshold_tunable(entry) for entry in environ.get("GLIBC_TUNABLES", "").split(":")):
        names.append("GLIBC_TUNABLES")
    return names


def _a_threshold_tunable(entry: str) -> bool:
    """Whether a GLIBC_TUNABLES entry (``name=value``, ':' between them) sets one of the three: glibc
    ignores an entry without '=', and applies an empty value (as 0), as it does ``MALLOC_*_=``."""
    name, equals, _ = entry.partition("=")
    return bool(equals) and name in _OPERATOR_TUNABLES


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library where it is glibc (mallopt and malloc_trim are glibc's: musl has neither), looked
    up once: ``find_library`` runs ``ldconfig -p`` in a subprocess, which `keep_freed_heap` does at
    start rather than the first quiet action on the reactor's thread; and a library loaded anew makes
    classes of its own, garbage for a later collection."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt, trim = libc.mallopt, libc.malloc_trim
        libc.gnu_get_libc_version  # noqa: B018 (glibc only)
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return libc
