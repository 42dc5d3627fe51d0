"""Giving freed memory back to the system: glibc's allocator tuned for large short-lived buffers, and
trimmed once a burst is over.

Decoded images, network inputs and maps are megabytes each and live for one batch. By default glibc
raises its mmap threshold to the largest block freed so far (up to 32 MiB), after which such buffers come
from the heap arenas, one arena per thread that ever allocated, and freed heap pages are rarely returned:
the process keeps its peak for ever. A fixed threshold keeps every large buffer in its own mapping,
unmapped when freed; fewer arenas limit the fragmentation of the rest; and ``malloc_trim`` after a burst
hands back what the heaps hold free. Elsewhere than glibc (musl, macOS) these are no-ops.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections.abc import Callable
from functools import cache

__all__ = ["IdleTrimmer", "trim_heap", "tune_allocator"]

log = logging.getLogger("pose.service")

M_MMAP_THRESHOLD = -3  # mallopt parameters (malloc.h)
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's initial value, now fixed: the dynamic raise is what keeps peaks
ARENA_MAX = 2


@cache
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt, libc.malloc_trim  # noqa: B018 - both exist only in glibc
    except (OSError, AttributeError):
        return None
    return libc


def tune_allocator(mmap_threshold: int = MMAP_THRESHOLD_BYTES, arena_max: int = ARENA_MAX) -> bool:
    """Fix glibc's mmap threshold and cap its arenas (call before the model loads); False elsewhere."""
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(libc.mallopt(M_ARENA_MAX, arena_max))


def trim_heap() -> bool:
    """Return the free pages of every heap arena to the system; True when some were returned."""
    libc = _glibc()
    return libc is not None and bool(libc.malloc_trim(0))


class IdleTrimmer:
    """Trims the heap once the service has been idle for ``idle_s`` after some activity.

    ``activity`` is a counter that grows with work done (batches run, requests answered): a trim follows
    each burst once, never a quiet period twice, and never a burst still going on (``busy``).
    """

    def __init__(
        self,
        activity: Callable[[], float],
        busy: Callable[[], bool],
        idle_s: float = 2.0,
        trim: Callable[[], bool] = trim_heap,
    ) -> None:
        self.activity = activity
        self.busy = busy
        self.idle_s = idle_s
        self.trim = trim
        self.trims = 0
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="pose-heap-trim")

    async def _run(self) -> None:
        trimmed_at = seen = self.activity()
        while True:
            await asyncio.sleep(self.idle_s)
            now = self.activity()
            if now != seen or self.busy():  # work happened during the last interval: wait for quiet
                seen = now
                continue
            if now != trimmed_at:
                await asyncio.to_thread(self.trim)
                trimmed_at = now
                self.trims += 1

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
