"""Admission before decoding: pixel budgets checked from image headers, pixels decoded in a bounded pool.

Decoded images are what costs memory (3 bytes a pixel, and more once resized for the network), and the
header says how many pixels an image will take before any is allocated. So a request reserves its
images' pixels from one budget shared by everything in flight before they are decoded, and gives them
back when it is answered: a request over its own budget gets 413, one that finds the shared budget full
gets 429 and never touches the pool. Parsing and decoding run in a small thread pool so the event loop
stays free for health probes and for forming batches.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import ParamSpec, TypeVar

import numpy as np

from service.errors import BusyError, ImageTooLargeError, ServiceError
from service.imaging import ImageHeader, decode_pixels, read_header
from service.metrics import Metrics
from service.settings import Settings

__all__ = ["ImageIntake"]

P = ParamSpec("P")
T = TypeVar("T")


class ImageIntake:
    """A request's images from bytes to arrays, within the per-request and in-flight pixel budgets."""

    def __init__(self, settings: Settings, metrics: Metrics, retry_after_s: Callable[[], float] = lambda: 1.0) -> None:
        self.settings = settings
        self.metrics = metrics
        self.retry_after_s = retry_after_s  # a hint for refused clients: how long a batch takes now
        self.pool = ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="pose-decode")
        self.inflight_pixels = 0
        self._freed = asyncio.Condition()  # notified whenever pixels go back to the budget

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn`` in the bounded pool (CPU work that must not hold up the event loop)."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, lambda: fn(*args, **kwargs))

    def _headers(self, payloads: Sequence[bytes]) -> list[ImageHeader]:
        s = self.settings
        headers = []
        for i, data in enumerate(payloads):
            try:
                headers.append(read_header(data, s.max_image_pixels, s.min_image_side, s.max_aspect_ratio))
            except ServiceError as err:
                err.message = f"image {i}: {err.message}" if len(payloads) > 1 else err.message
                raise
        return headers

    def _decode(self, data: bytes, header: ImageHeader, index: int, count: int) -> np.ndarray:
        try:
            return decode_pixels(data, header)
        except ServiceError as err:
            err.message = f"image {index}: {err.message}" if count > 1 else err.message
            raise

    @asynccontextmanager
    async def reserve(self, pixels: int, wait_s: float = 0.0) -> AsyncIterator[None]:
        """Hold ``pixels`` of the in-flight budget for the block: 413 over the per-request budget; when the
        shared budget is full, wait up to ``wait_s`` for it (a video's later frames queue rather than fail
        mid-stream), then 429."""
        budget = self.settings.max_request_pixels
        if pixels > budget:
            raise ImageTooLargeError(f"the request's images hold {pixels} pixels; the limit per request is {budget}")
        limit = self.settings.max_inflight_pixels
        if self.inflight_pixels + pixels > limit and wait_s > 0:
            async with self._freed:
                try:
                    await asyncio.wait_for(self._freed.wait_for(lambda: self.inflight_pixels + pixels <= limit), wait_s)
                except TimeoutError:
                    pass
        if self.inflight_pixels + pixels > limit:
            self.metrics.shed.labels(reason="pixels").inc()
            raise BusyError(
                f"{self.inflight_pixels} of {limit} pixels are being processed; this request needs {pixels}",
                headers={"Retry-After": str(max(1, round(self.retry_after_s())))},
            )
        self.inflight_pixels += pixels
        self.metrics.inflight_pixels.set(self.inflight_pixels)
        try:
            yield
        finally:
            self.inflight_pixels -= pixels
            self.metrics.inflight_pixels.set(self.inflight_pixels)
            async with self._freed:
                self._freed.notify_all()

    @asynccontextmanager
    async def admit(
        self, payloads: Sequence[bytes], check: Callable[[list[ImageHeader]], None] | None = None
    ) -> AsyncIterator[list[np.ndarray]]:
        """The decoded images, their pixels held in the in-flight budget until the block exits.

        ``check`` sees the headers before any pixel is decoded (the batcher's admission: a request that
        would be answered too late costs a header read, not a decode).
        """
        headers = await self.run(self._headers, payloads)
        if check is not None:
            check(headers)
        async with self.reserve(sum(h.pixels for h in headers)):
            yield list(
                await asyncio.gather(
                    *(
                        self.run(self._decode, d, h, i, len(payloads))
                        for i, (d, h) in enumerate(zip(payloads, headers, strict=True))
                    )
                )
            )

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
