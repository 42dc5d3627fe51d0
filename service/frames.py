"""A stream's frames waiting for the model: a small bounded queue that drops the oldest frame when full.

A live camera outruns a busy model; queueing every frame would make each answer later than the last.
Keeping only the newest few bounds both memory and latency, and the count of frames pushed out is handed
to the next answer so the client knows what it lost.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

from service.errors import ServiceError

__all__ = ["Frame", "FrameQueue"]


@dataclass
class Frame:
    """One frame as received: its number on the stream and the client's timestamp, echoed in the answer."""

    seq: int
    data: bytes
    client_time: float | None = None
    received: float = field(default_factory=time.perf_counter)
    error: ServiceError | None = None  # refused on arrival (e.g. too large): answered with this error


class FrameQueue:
    """At most ``capacity`` frames; ``put`` past it discards the oldest. One reader task, one writer task."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._frames: deque[Frame] = deque()
        self._ready = asyncio.Event()
        self._dropped = 0  # since the last take_dropped
        self.dropped_total = 0
        self.closed = False
        self.error: ServiceError | None = None  # why the stream ends, when the client broke the protocol

    def __len__(self) -> int:
        return len(self._frames)

    def put(self, frame: Frame) -> Frame | None:
        """Queue ``frame``; returns the frame it pushed out, if any."""
        dropped = self._frames.popleft() if len(self._frames) >= self.capacity else None
        if dropped is not None:
            self.count_dropped()
        self._frames.append(frame)
        self._ready.set()
        return dropped

    def count_dropped(self, n: int = 1) -> None:
        """Record frames lost to overload (pushed out here, or refused further on)."""
        self._dropped += n
        self.dropped_total += n

    def take_dropped(self) -> int:
        """Frames dropped since the previous call: what the next message reports."""
        n, self._dropped = self._dropped, 0
        return n

    async def get(self) -> Frame | None:
        """The oldest queued frame; ``None`` once closed (frames still queued then are not answered)."""
        while not self._frames and not self.closed:
            self._ready.clear()
            await self._ready.wait()
        if self.closed:
            return None
        return self._frames.popleft()

    def close(self, error: ServiceError | None = None) -> None:
        """End the stream: the reader saw the client leave (``error`` None) or break the protocol."""
        self.closed = True
        self.error = self.error or error
        self._ready.set()
