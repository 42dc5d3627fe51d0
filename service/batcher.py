"""Dynamic batching: requests queue up, one worker runs them together on the device.

The first request of a batch waits at most ``max_queue_delay`` for others, until ``max_batch_size`` images
are collected (a single request larger than that runs alone). Requests whose client already gave up
(timed out or disconnected) are dropped before the batch runs, so they cost no device time. The model
runs in one worker thread, so the event loop keeps accepting and answering while a batch computes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from pose.pipeline import BatchTimings, PoseResult
from service.errors import QueueFullError, ShuttingDownError
from service.metrics import Metrics
from service.options import RunOptions

RunBatch = Callable[[Sequence[np.ndarray], RunOptions], tuple[list[PoseResult], BatchTimings]]


@dataclass
class BatchInfo:
    """What a request learns about the batch it rode in."""

    queue_s: float
    inference_s: float
    postprocess_s: float
    batch_size: int


@dataclass(eq=False)  # jobs are identities: a set holds the pending ones
class _Job:
    images: list[np.ndarray]
    run: RunOptions
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class DynamicBatcher:
    """Bounded queue plus one worker; ``submit`` returns each image's poses and the batch's timings."""

    def __init__(
        self, run_batch: RunBatch, max_batch_size: int, max_queue_delay_s: float, queue_limit: int, metrics: Metrics
    ) -> None:
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self.queue_limit = queue_limit
        self.metrics = metrics
        self._queue: asyncio.Queue[_Job | None] = asyncio.Queue()
        self._carry: _Job | None = None  # a job that did not fit in the previous batch
        self._closed = False
        self._stopping = False  # the worker saw the stop sentinel
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pose-worker")
        self._worker: asyncio.Task | None = None
        self._closing: asyncio.Task | None = None
        self._pending: set[_Job] = set()  # submitted and not yet answered
        self.last_batch_s = 0.0  # used for Retry-After

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="pose-batcher")

    async def submit(self, images: list[np.ndarray], run: RunOptions) -> tuple[list[PoseResult], BatchInfo]:
        """Each image's poses once its batch ran; requests with other run options run as a separate pass."""
        if self._closed:
            raise ShuttingDownError("the service is shutting down; send the request again")
        if self._queue.qsize() >= self.queue_limit:
            retry = max(1, round(self.last_batch_s * (1 + self._queue.qsize() / self.max_batch_size)))
            raise QueueFullError(
                f"{self._queue.qsize()} requests are queued (limit {self.queue_limit}); retry later",
                headers={"Retry-After": str(retry)},
            )
        job = _Job(images, run, asyncio.get_running_loop().create_future())
        self._pending.add(job)
        job.future.add_done_callback(lambda _: self._pending.discard(job))
        self._queue.put_nowait(job)
        self.metrics.queue_depth.set(self._queue.qsize())
        return await job.future

    def drain(self, timeout_s: float) -> asyncio.Task:
        """Start the one drain: refuse new work, finish what is queued within ``timeout_s``, then answer
        whatever is left with :class:`ShuttingDownError` (a 503) rather than leave it hanging."""
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self._drain(timeout_s), name="pose-drain")
        return self._closing

    async def close(self, timeout_s: float) -> None:
        """Drain (or wait for the drain already started) and stop the worker."""
        await asyncio.shield(self.drain(timeout_s))

    async def _drain(self, timeout_s: float) -> None:
        self._closed = True
        self._queue.put_nowait(None)
        if self._worker is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._worker), timeout_s)
            except TimeoutError:
                self._worker.cancel()
        for job in list(self._pending):
            if not job.future.done():
                job.future.set_exception(ShuttingDownError("the service shut down before this request was answered"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _next(self, deadline: float | None) -> _Job | None:
        """The carried-over job, else a queued one; waits for one until ``deadline`` (``None``: forever).

        A job already queued is taken even past the deadline: under load the queue holds a full batch
        while the previous one computes, and waiting for nothing would only shrink the next batch.
        Raises ``TimeoutError`` when the queue stays empty until the deadline.
        """
        if self._carry is not None:
            carried, self._carry = self._carry, None
            return carried
        if not self._queue.empty():
            job = self._queue.get_nowait()
        elif deadline is None:
            job = await self._queue.get()
        else:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise TimeoutError
            job = await asyncio.wait_for(self._queue.get(), remaining)
        self.metrics.queue_depth.set(self._queue.qsize())
        return job

    async def _collect(self) -> list[_Job]:
        """The next batch; empty once the stop sentinel was seen and nothing is left.

        The delay window opens when the batch's first job arrived, not when the worker got to it, so time
        the worker spent elsewhere (the previous batch, a busy event loop) counts against the window.
        Jobs whose client already gave up are dropped here and take no slot.
        """
        first: _Job | None = None
        while first is None or first.future.done():
            if self._stopping and self._carry is None:
                return []
            first = await self._next(None)
            if first is None:
                self._stopping = True
                return []
        jobs, n_images = [first], len(first.images)
        deadline = first.enqueued + self.max_queue_delay_s
        while n_images < self.max_batch_size and not self._stopping:
            try:
                job = await self._next(deadline)
            except TimeoutError:
                break
            if job is None:
                self._stopping = True
                break
            if job.future.done():
                continue
            if n_images + len(job.images) > self.max_batch_size:
                self._carry = job
                break
            jobs.append(job)
            n_images += len(job.images)
        return jobs

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while jobs := await self._collect():
            live = [j for j in jobs if not j.future.done()]  # clients that gave up cost nothing
            for run in dict.fromkeys(j.run for j in live):
                await self._execute(loop, [j for j in live if j.run == run], run)

    async def _execute(self, loop: asyncio.AbstractEventLoop, jobs: list[_Job], run: RunOptions) -> None:
        images = [im for j in jobs for im in j.images]
        started = time.perf_counter()
        try:
            results, timings = await loop.run_in_executor(self._executor, self.run_batch, images, run)
        except Exception as err:  # a failing batch fails its requests, never the worker
            for j in jobs:
                if not j.future.done():
                    j.future.set_exception(err)
            return
        self.last_batch_s = time.perf_counter() - started
        self.metrics.batch_size.observe(len(images))
        self.metrics.inference_seconds.observe(timings.preprocess + timings.inference)
        self.metrics.postprocess_seconds.observe(timings.postprocess)
        offset = 0
        for j in jobs:
            mine = results[offset : offset + len(j.images)]
            offset += len(j.images)
            queue_s = started - j.enqueued
            self.metrics.queue_seconds.observe(queue_s)
            info = BatchInfo(queue_s, timings.preprocess + timings.inference, timings.postprocess, len(images))
            if not j.future.done():
                j.future.set_result((mine, info))
