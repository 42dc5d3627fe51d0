"""Deadline-aware dynamic batching: requests wait in one FIFO, one worker runs them together on the device.

Every request carries a deadline. The batcher knows how long a batch takes (:class:`BatchCostModel`, fitted
to the batches it ran), so it can tell when a request would be answered:

- on arrival, a request that could not be answered before its deadline is refused at once with 429
  ``overloaded`` and a ``Retry-After`` of the time the backlog needs to shrink enough, instead of queueing
  for an answer that would come too late;
- while it waits, a request whose deadline can no longer be met (a batch ran long, the machine slowed) is
  shed the same way, at once, and its queue slot is free again; so is a request whose client left;
- a batch is formed only from live requests that it can answer in time, first come first served. Once a
  request is in a running batch the service has chosen to answer it: it gets its answer, never a 504.

The first request of a batch waits at most ``max_queue_delay`` for others, until ``max_batch_size``
images are collected (a single request larger than that runs alone). The model runs in one worker
thread, so the event loop keeps accepting, refusing and answering while a batch computes.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from pose.pipeline import BatchTimings, PoseResult
from service.batch_cost import BatchCostModel
from service.errors import OverloadedError, QueueFullError, ShuttingDownError
from service.metrics import Metrics
from service.options import RunOptions

__all__ = ["BatchInfo", "DynamicBatcher", "RunBatch", "UnitsOf"]

RunBatch = Callable[[Sequence[np.ndarray], RunOptions], tuple[list[PoseResult], BatchTimings]]
UnitsOf = Callable[[Sequence[np.ndarray], RunOptions], float]  # a request's work (see batch_cost.work_units)


def count_images(images: Sequence[np.ndarray], run: RunOptions) -> float:
    return float(len(images))


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
    units: float
    deadline: float  # time.perf_counter() seconds; math.inf: none
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)
    started: bool = False
    expiry: asyncio.TimerHandle | None = None


class DynamicBatcher:
    """Bounded FIFO plus one worker; ``submit`` returns each image's poses and the batch's timings."""

    def __init__(
        self,
        run_batch: RunBatch,
        max_batch_size: int,
        max_queue_delay_s: float,
        queue_limit: int,
        metrics: Metrics,
        cost: BatchCostModel | None = None,
        units_of: UnitsOf = count_images,
    ) -> None:
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self.queue_limit = queue_limit
        self.metrics = metrics
        self.units_of = units_of
        self.cost = cost or BatchCostModel()
        self._waiting: deque[_Job] = deque()  # admitted, not started, client still there; oldest first
        self._arrived = asyncio.Event()  # set on each submit, removal and stop: the worker looks again
        self._closed = False
        self._stopping = False  # the drain began: finish what waits, take nothing new
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pose-worker")
        self._worker: asyncio.Task | None = None
        self._closing: asyncio.Task | None = None
        self._pending: set[_Job] = set()  # submitted and not yet answered
        self._running_since: float | None = None  # when the batch computing now started
        self._running_units = 0.0
        self._computing = threading.Event()

    @property
    def cost(self) -> BatchCostModel:
        """The batch-time estimate admission and shedding rely on (warm-up seeds it, each batch refines it)."""
        return self._cost

    @cost.setter
    def cost(self, model: BatchCostModel) -> None:
        self._cost = model
        self._publish_cost()

    def _publish_cost(self) -> None:
        self.metrics.batch_cost.labels(part="fixed").set(self._cost.fixed_s)
        self.metrics.batch_cost.labels(part="per_unit").set(self._cost.per_unit_s)

    @property
    def busy(self) -> bool:
        """The worker thread is computing a batch now (also one the drain abandoned)."""
        return self._computing.is_set()

    def _compute(self, images: list[np.ndarray], run: RunOptions) -> tuple[list[PoseResult], BatchTimings]:
        """``run_batch`` in the worker thread, flagged while it runs."""
        self._computing.set()
        try:
            return self.run_batch(images, run)
        finally:
            self._computing.clear()

    @property
    def waiting(self) -> int:
        """Requests admitted and not yet in a batch."""
        return len(self._waiting)

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="pose-batcher")

    # ---- admission --------------------------------------------------------------------------------------

    def _remaining_s(self, now: float) -> float:
        """Estimated time left of the batch computing now (0 when idle or already over its estimate)."""
        if self._running_since is None:
            return 0.0
        return max(0.0, self._running_since + self.cost.seconds(self._running_units) - now)

    def _finish_after(self, waiting: int, units: float, now: float, queued: bool) -> float:
        """When the last of ``waiting`` images holding ``units`` work, behind the running batch, would be
        answered. When it has to wait (``queued``: a batch runs or others wait), its batch is counted full:
        later arrivals join it up to the batch size before it starts, and admitting them must not make it
        late. An idle service starts it after the delay window, with whatever arrived by then."""
        batches = max(1, math.ceil(waiting / self.max_batch_size))
        per_image = units / waiting if waiting else 1.0
        padded = units + (batches * self.max_batch_size - waiting) * per_image if queued else units
        return now + self._remaining_s(now) + self.cost.seconds(padded, batches) + self.cost.margin_s()

    def _queued(self) -> bool:
        return self._running_since is not None or bool(self._waiting)

    def projected_finish(self, units: float, images: int, now: float | None = None) -> float:
        """When a request of ``units`` work in ``images`` images, arriving now, would be answered."""
        now = time.perf_counter() if now is None else now
        ahead_units = sum(j.units for j in self._waiting)
        ahead_images = sum(len(j.images) for j in self._waiting)
        return self._finish_after(ahead_images + images, ahead_units + units, now, self._queued())

    def check_admission(self, units: float, images: int, deadline: float) -> None:
        """Refuse, before anything is decoded or queued, a request that cannot be answered by ``deadline``.

        Raises :class:`ShuttingDownError`, :class:`QueueFullError` (the queue limit) or
        :class:`OverloadedError` (the wait); both 429s carry a ``Retry-After`` after which, at the current
        rate and with no new arrivals, a request like this one would be admitted.
        """
        if self._closed:
            raise ShuttingDownError("the service is shutting down; send the request again")
        now = time.perf_counter()
        finish = self.projected_finish(units, images, now)
        if len(self._waiting) >= self.queue_limit:
            self.metrics.shed.labels(reason="queue_full").inc()
            raise QueueFullError(
                f"{len(self._waiting)} requests are waiting (limit {self.queue_limit}); retry later",
                headers=_retry_after(finish - now - self.cost.seconds(units)),
            )
        if finish > deadline:
            self.metrics.shed.labels(reason="deadline").inc()
            raise OverloadedError(
                f"the service would answer in {finish - now:.1f} s, after this request's deadline "
                f"({max(0.0, deadline - now):.1f} s from now); retry later",
                headers=_retry_after(finish - deadline),
            )

    async def submit(
        self, images: list[np.ndarray], run: RunOptions, deadline: float = math.inf
    ) -> tuple[list[PoseResult], BatchInfo]:
        """Each image's poses once its batch ran; requests with other run options run as a separate pass.

        ``deadline`` is a :func:`time.perf_counter` time. Raises the refusals of :meth:`check_admission`,
        and :class:`OverloadedError` later if the request is shed while it waits.
        """
        units = self.units_of(images, run)
        self.check_admission(units, len(images), deadline)
        loop = asyncio.get_running_loop()
        job = _Job(images, run, units, deadline, loop.create_future())
        self._pending.add(job)
        self._waiting.append(job)
        if math.isfinite(deadline):
            # Latest start at which it could still finish, alone; past it, it is shed if still waiting.
            latest_start = deadline - self.cost.seconds(units) - self.cost.margin_s()
            job.expiry = loop.call_at(loop.time() + latest_start - time.perf_counter(), self._expire, job)
        job.future.add_done_callback(lambda _: self._forget(job))
        self._changed()
        return await job.future

    def _forget(self, job: _Job) -> None:
        """A job answered, refused or given up by its client: its slot is free at once."""
        self._pending.discard(job)
        if job.expiry is not None:
            job.expiry.cancel()
        if not job.started:
            try:
                self._waiting.remove(job)
            except ValueError:
                pass
            self._changed()

    def _changed(self) -> None:
        self.metrics.queue_depth.set(len(self._waiting))
        self._arrived.set()

    def _shed(self, job: _Job, now: float) -> None:
        """Refuse a waiting job whose deadline can no longer be met (out of the queue now, not when the
        future's callbacks run)."""
        self._waiting.remove(job)
        self._changed()
        self.metrics.shed.labels(reason="expired").inc()
        # The same request sent again after Retry-After, with the same time budget, would be admitted if the
        # backlog ahead of it (everything still waiting) drains meanwhile and nothing new arrives.
        budget = job.deadline - job.enqueued
        retry = self.projected_finish(job.units, len(job.images), now) - now - budget
        job.future.set_exception(
            OverloadedError(
                "the service could not start this request in time to meet its deadline; retry later",
                headers=_retry_after(retry),
            )
        )

    def _expire(self, job: _Job) -> None:
        if not job.started and not job.future.done():
            self._shed(job, time.perf_counter())

    def _shed_hopeless(self) -> None:
        """Shed every waiting job whose projected answer (behind the jobs ahead of it) is past its deadline."""
        now = time.perf_counter()
        units, images = 0.0, 0
        for job in list(self._waiting):
            through = images + len(job.images)  # a job past the first batch waits for it: its batch fills up
            if self._finish_after(through, units + job.units, now, through > self.max_batch_size) > job.deadline:
                self._shed(job, now)
            else:
                units, images = units + job.units, images + len(job.images)

    # ---- shutdown ---------------------------------------------------------------------------------------

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
        self._closed = self._stopping = True
        self._arrived.set()
        if self._worker is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._worker), timeout_s)
            except TimeoutError:
                self._worker.cancel()
        for job in list(self._pending):
            if not job.future.done():
                job.future.set_exception(ShuttingDownError("the service shut down before this request was answered"))
        # A batch still computing is abandoned (its requests were just answered); the process exits without it.
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ---- the worker -------------------------------------------------------------------------------------

    async def _wait_for_change(self, until: float | None) -> bool:
        """Wait for a submit, removal or stop until ``until`` (``None``: for ever); False on time-out."""
        self._arrived.clear()
        if until is None:
            await self._arrived.wait()
            return True
        remaining = until - time.perf_counter()
        if remaining <= 0:
            return False
        try:
            await asyncio.wait_for(self._arrived.wait(), remaining)
        except TimeoutError:
            return False
        return True

    async def _collect(self) -> list[_Job]:
        """The next batch of live jobs; empty once the drain began and nothing is left.

        The delay window opens when the batch's first job arrived, not when the worker got to it, so time
        the worker spent elsewhere (the previous batch, a busy event loop) counts against the window.
        """
        while True:
            self._shed_hopeless()
            if not self._waiting:
                if self._stopping:
                    return []
                await self._wait_for_change(None)
                continue
            window_end = self._waiting[0].enqueued + self.max_queue_delay_s
            while (
                self._waiting
                and not self._stopping
                and sum(len(j.images) for j in self._waiting) < self.max_batch_size
                and await self._wait_for_change(window_end)
            ):
                pass
            if batch := self._take_batch():
                return batch

    def _take_batch(self) -> list[_Job]:
        """Live jobs from the head of the queue, up to the batch size, each answerable by its deadline."""
        now = time.perf_counter()
        batch: list[_Job] = []
        images, units = 0, 0.0
        while self._waiting:
            job = self._waiting[0]
            if batch and images + len(job.images) > self.max_batch_size:
                break
            finish = now + self.cost.seconds(units + job.units) + self.cost.margin_s()
            if finish > job.deadline:  # too late even if it started now
                self._shed(job, now)
                continue
            if any(finish > j.deadline for j in batch):  # it would make an earlier job late: next batch
                break
            self._waiting.popleft()
            job.started = True
            if job.expiry is not None:
                job.expiry.cancel()
            batch.append(job)
            images, units = images + len(job.images), units + job.units
        self._changed()
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while jobs := await self._collect():
            for run in dict.fromkeys(j.run for j in jobs):
                await self._execute(loop, [j for j in jobs if j.run == run], run)

    async def _execute(self, loop: asyncio.AbstractEventLoop, jobs: list[_Job], run: RunOptions) -> None:
        live = [j for j in jobs if not j.future.done()]  # a client may leave between collection and now
        if not live:
            return
        images = [im for j in live for im in j.images]
        units = sum(j.units for j in live)
        started = self._running_since = time.perf_counter()
        self._running_units = units
        try:
            results, timings = await loop.run_in_executor(self._executor, self._compute, images, run)
        except Exception as err:  # a failing batch fails its requests, never the worker
            for j in live:
                if not j.future.done():
                    j.future.set_exception(err)
            return
        finally:
            self._running_since, self._running_units = None, 0.0
        self.cost.observe(units, time.perf_counter() - started)
        self.metrics.batch_size.observe(len(images))
        self.metrics.inference_seconds.observe(timings.preprocess + timings.inference)
        self.metrics.postprocess_seconds.observe(timings.postprocess)
        self._publish_cost()
        offset = 0
        for j in live:
            mine = results[offset : offset + len(j.images)]
            offset += len(j.images)
            if j.future.done():  # the client left (or the drain answered it) while the batch computed
                reason = "client_gone" if j.future.cancelled() else "shutdown"
                self.metrics.wasted_images.labels(reason=reason).inc(len(j.images))
                continue
            queue_s = started - j.enqueued
            self.metrics.queue_seconds.observe(queue_s)
            info = BatchInfo(queue_s, timings.preprocess + timings.inference, timings.postprocess, len(images))
            j.future.set_result((mine, info))


def _retry_after(seconds: float) -> dict[str, str]:
    """``Retry-After`` in whole seconds, at least 1."""
    return {"Retry-After": str(max(1, math.ceil(seconds)))}
