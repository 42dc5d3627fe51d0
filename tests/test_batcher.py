"""The dynamic batcher with a fake model: batch formation, carry-over, cancelled requests, drain, deadlines
(admission, shedding, answering what started) and the batch-time estimate behind them."""

from __future__ import annotations

import asyncio
import math
import time

import numpy as np
import pytest
import torch

from pose.pipeline import BatchTimings, PoseResult
from service.batch_cost import BatchCostModel, work_units
from service.batcher import DynamicBatcher
from service.errors import OverloadedError, QueueFullError, ShuttingDownError
from service.metrics import Metrics
from service.options import RunOptions

RUN = RunOptions(flip=True, scales=(1.0,))


class FakeModel:
    """Records each batch; answers every image with one pose whose score is the image's first pixel."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.seconds = seconds

    def __call__(self, images, run):  # noqa: ANN001, ANN204
        self.batches.append([int(im[0, 0, 0]) for im in images])
        time.sleep(self.seconds)
        results = [
            PoseResult(
                torch.zeros(1, 17, 3),
                torch.zeros(1, 17, 3),
                torch.tensor([float(im[0, 0, 0])]),
                torch.zeros(1),
                torch.zeros(1),
                torch.zeros(1, 4),
            )
            for im in images
        ]
        return results, BatchTimings(inference=0.001, postprocess=0.001)


def image(value: int) -> np.ndarray:
    return np.full((4, 4, 3), value, np.uint8)


def run(coro):  # noqa: ANN001, ANN201
    return asyncio.run(coro)


def test_concurrent_requests_form_batches_up_to_the_limit_and_get_their_own_results() -> None:
    async def scenario() -> tuple[FakeModel, list[float]]:
        model = FakeModel()
        batcher = DynamicBatcher(model, max_batch_size=4, max_queue_delay_s=0.2, queue_limit=100, metrics=Metrics())
        batcher.start()
        outs = await asyncio.gather(*(batcher.submit([image(i)], RUN) for i in range(10)))
        await batcher.close(5)
        return model, [float(res[0].scores[0]) for res, _ in outs]

    model, scores = run(scenario())
    assert scores == [float(i) for i in range(10)]  # each request got its own image's answer
    assert [len(b) for b in model.batches] == [4, 4, 2]


def test_queued_jobs_form_full_batches_even_when_answering_them_keeps_the_loop_busy() -> None:
    """Under load the queue holds the next batch while one computes; the delay window counts from the
    first job's arrival, so answering the previous batch (blocking the event loop) cannot shrink it."""

    async def scenario() -> FakeModel:
        model = FakeModel(seconds=0.02)
        batcher = DynamicBatcher(model, max_batch_size=8, max_queue_delay_s=0.005, queue_limit=100, metrics=Metrics())
        batcher.start()

        async def client(i: int) -> None:
            await batcher.submit([image(i)], RUN)
            time.sleep(0.01)  # per-response work on the event loop

        await asyncio.gather(*(client(i) for i in range(32)))
        await batcher.close(5)
        return model

    assert [len(b) for b in run(scenario()).batches] == [8, 8, 8, 8]


def test_jobs_whose_client_left_take_no_batch_slot() -> None:
    async def scenario() -> FakeModel:
        model = FakeModel(seconds=0.1)
        batcher = DynamicBatcher(model, max_batch_size=3, max_queue_delay_s=0.01, queue_limit=100, metrics=Metrics())
        batcher.start()
        first = asyncio.ensure_future(batcher.submit([image(1)], RUN))
        await asyncio.sleep(0.03)  # the first batch (image 1 alone after the window) is computing
        left = [asyncio.ensure_future(batcher.submit([image(v)], RUN)) for v in (2, 3)]
        kept = [asyncio.ensure_future(batcher.submit([image(v)], RUN)) for v in (4, 5, 6)]
        await asyncio.sleep(0)
        for f in left:
            f.cancel()
        await asyncio.gather(first, *kept)
        await batcher.close(5)
        return model

    assert run(scenario()).batches == [[1], [4, 5, 6]]


def test_a_request_that_does_not_fit_waits_for_the_next_batch() -> None:
    async def scenario() -> FakeModel:
        model = FakeModel()
        batcher = DynamicBatcher(model, max_batch_size=4, max_queue_delay_s=0.2, queue_limit=100, metrics=Metrics())
        batcher.start()
        await asyncio.gather(
            batcher.submit([image(1), image(2), image(3)], RUN),
            batcher.submit([image(4), image(5)], RUN),
            batcher.submit([image(6)], RUN),
        )
        await batcher.close(5)
        return model

    assert run(scenario()).batches == [[1, 2, 3], [4, 5, 6]]


def test_requests_with_other_run_options_run_as_a_separate_pass() -> None:
    async def scenario() -> list[tuple[list[int], RunOptions]]:
        seen: list[tuple[list[int], RunOptions]] = []
        model = FakeModel()

        def record(images, run):  # noqa: ANN001, ANN202
            seen.append(([int(im[0, 0, 0]) for im in images], run))
            return model(images, run)

        batcher = DynamicBatcher(record, max_batch_size=8, max_queue_delay_s=0.05, queue_limit=100, metrics=Metrics())
        batcher.start()
        other = RunOptions(flip=False, scales=(1.0,))
        await asyncio.gather(
            batcher.submit([image(1)], RUN),
            batcher.submit([image(2)], other),
            batcher.submit([image(3)], RunOptions(flip=True, scales=(1.0,))),  # equal to RUN: same pass
        )
        await batcher.close(5)
        return seen

    assert run(scenario()) == [([1, 3], RUN), ([2], RunOptions(flip=False, scales=(1.0,)))]


def test_cancelled_requests_cost_no_model_time() -> None:
    async def scenario() -> FakeModel:
        model = FakeModel(seconds=0.2)
        batcher = DynamicBatcher(model, max_batch_size=1, max_queue_delay_s=0, queue_limit=100, metrics=Metrics())
        batcher.start()
        first = asyncio.ensure_future(batcher.submit([image(1)], RUN))
        await asyncio.sleep(0.05)  # the first is running; the next two wait
        second = asyncio.ensure_future(batcher.submit([image(2)], RUN))
        third = asyncio.ensure_future(batcher.submit([image(3)], RUN))
        await asyncio.sleep(0.01)
        second.cancel()
        await first
        await third
        await batcher.close(5)
        return model

    assert run(scenario()).batches == [[1], [3]]


def test_queue_limit_and_closing() -> None:
    async def scenario() -> None:
        model = FakeModel(seconds=0.2)
        batcher = DynamicBatcher(model, max_batch_size=1, max_queue_delay_s=0, queue_limit=1, metrics=Metrics())
        batcher.start()
        running = asyncio.ensure_future(batcher.submit([image(1)], RUN))
        await asyncio.sleep(0.05)
        queued = asyncio.ensure_future(batcher.submit([image(2)], RUN))
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFullError) as info:
            await batcher.submit([image(3)], RUN)
        assert int(info.value.headers["Retry-After"]) >= 1
        await batcher.close(5)  # drains what was queued before closing
        assert (await running)[0][0].scores.item() == 1 and (await queued)[0][0].scores.item() == 2
        with pytest.raises(ShuttingDownError):
            await batcher.submit([image(4)], RUN)

    run(scenario())


def test_a_failing_batch_fails_its_requests_and_the_worker_survives() -> None:
    async def scenario() -> None:
        calls = {"n": 0}
        model = FakeModel()

        def flaky(images, run):  # noqa: ANN001, ANN202
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("device fault")
            return model(images, run)

        batcher = DynamicBatcher(flaky, max_batch_size=1, max_queue_delay_s=0, queue_limit=10, metrics=Metrics())
        batcher.start()
        with pytest.raises(RuntimeError, match="device fault"):
            await batcher.submit([image(1)], RUN)
        assert (await batcher.submit([image(2)], RUN))[0][0].scores.item() == 2
        await batcher.close(5)

    run(scenario())


def test_what_the_drain_cannot_finish_is_answered_as_shutting_down() -> None:
    async def scenario() -> list[object]:
        model = FakeModel(seconds=0.3)
        batcher = DynamicBatcher(model, max_batch_size=1, max_queue_delay_s=0, queue_limit=10, metrics=Metrics())
        batcher.start()
        jobs = [asyncio.ensure_future(batcher.submit([image(i)], RUN)) for i in range(3)]
        await asyncio.sleep(0.05)  # the first is running, two wait
        await asyncio.gather(batcher.close(0.1), batcher.close(0.1))  # one drain, however often it is asked
        return list(await asyncio.gather(*jobs, return_exceptions=True))

    outcomes = run(scenario())
    assert all(isinstance(o, ShuttingDownError) for o in outcomes), outcomes  # none is left hanging


# ---- deadlines --------------------------------------------------------------------------------------------


def seeded(fixed_s: float, per_image_s: float, max_batch: int) -> BatchCostModel:
    """A cost model that already measured a batch of one and a full batch, as warm-up leaves it."""
    cost = BatchCostModel()
    cost.observe(1, fixed_s + per_image_s)
    cost.observe(max_batch, fixed_s + per_image_s * max_batch)
    return cost


def shed_count(metrics: Metrics, reason: str) -> float:
    return metrics.shed.labels(reason=reason)._value.get()


def test_a_request_that_would_be_answered_after_its_deadline_is_refused_on_arrival_with_an_honest_retry_after() -> None:
    async def scenario() -> None:
        model = FakeModel(seconds=0.3)
        metrics = Metrics()
        batcher = DynamicBatcher(model, 1, 0, 100, metrics, cost=seeded(0.0, 0.3, 1))
        batcher.start()
        now = time.perf_counter()
        running = asyncio.ensure_future(batcher.submit([image(1)], RUN, now + 5))
        await asyncio.sleep(0.05)  # image 1 computes (0.25 s left); image 2 waits behind it
        waiting = asyncio.ensure_future(batcher.submit([image(2)], RUN, now + 5))
        await asyncio.sleep(0)
        # A third would be answered after 0.25 + 0.3 + 0.3 s: over a 0.5 s deadline, under a 2 s one.
        start = time.perf_counter()
        with pytest.raises(OverloadedError) as info:
            await batcher.submit([image(3)], RUN, start + 0.5)
        expected = batcher.projected_finish(1.0, 1) - (start + 0.5)
        assert math.ceil(expected) == int(info.value.headers["Retry-After"]) >= 1
        assert info.value.status == 429 and time.perf_counter() - start < 0.05  # at once, not at the deadline
        fits = await batcher.submit([image(4)], RUN, time.perf_counter() + 2)
        assert fits[0][0].scores.item() == 4
        await asyncio.gather(running, waiting)
        await batcher.close(5)
        assert shed_count(metrics, "deadline") == 1

    run(scenario())


def test_a_waiting_request_whose_deadline_can_no_longer_be_met_is_shed_at_once_and_never_computed() -> None:
    async def scenario() -> tuple[FakeModel, float, float]:
        model = FakeModel(seconds=0.4)
        metrics = Metrics()
        batcher = DynamicBatcher(model, 1, 0, 100, metrics, cost=seeded(0.0, 0.1, 1))  # it believes 0.1 s
        batcher.start()
        now = time.perf_counter()
        slow = asyncio.ensure_future(batcher.submit([image(1)], RUN, now + 5))
        await asyncio.sleep(0.02)
        doomed = asyncio.ensure_future(batcher.submit([image(2)], RUN, now + 0.3))  # admitted: 0.1 + 0.1 s
        with pytest.raises(OverloadedError):
            await doomed
        shed_after = time.perf_counter() - now
        await slow  # the running batch took 0.4 s: image 2 could not start by 0.3 - 0.1 s
        await batcher.close(5)
        return model, shed_after, shed_count(metrics, "expired")

    model, shed_after, expired = run(scenario())
    assert model.batches == [[1]]  # image 2 was never computed
    assert shed_after < 0.35 and expired == 1  # shed at its latest start, before the running batch ended


def test_a_started_request_is_answered_even_after_its_deadline() -> None:
    async def scenario() -> tuple[float, float]:
        model = FakeModel(seconds=0.3)
        batcher = DynamicBatcher(model, 2, 0, 100, Metrics(), cost=seeded(0.0, 0.01, 2))  # believes 10 ms
        batcher.start()
        start = time.perf_counter()
        (poses, _) = await batcher.submit([image(7)], RUN, start + 0.1)
        await batcher.close(5)
        return time.perf_counter() - start, poses[0].scores.item()

    elapsed, score = run(scenario())
    assert score == 7 and elapsed > 0.1  # late, but answered: the work was not thrown away


def test_cancelled_and_shed_requests_release_their_queue_slot_at_once() -> None:
    async def scenario() -> None:
        model = FakeModel(seconds=0.2)
        batcher = DynamicBatcher(model, max_batch_size=1, max_queue_delay_s=0, queue_limit=3, metrics=Metrics())
        batcher.start()
        running = asyncio.ensure_future(batcher.submit([image(0)], RUN))
        await asyncio.sleep(0.05)
        gone = [asyncio.ensure_future(batcher.submit([image(i)], RUN)) for i in (1, 2, 3)]
        await asyncio.sleep(0)
        assert batcher.waiting == 3
        with pytest.raises(QueueFullError):
            await batcher.submit([image(9)], RUN)
        for f in gone:
            f.cancel()
        await asyncio.sleep(0)
        assert batcher.waiting == 0  # before the worker looked at the queue again
        kept = [asyncio.ensure_future(batcher.submit([image(i)], RUN)) for i in (4, 5, 6)]
        await asyncio.gather(running, *kept)
        await batcher.close(5)
        assert model.batches == [[0], [4], [5], [6]]

    run(scenario())


def test_work_cancelled_while_it_computes_is_counted_as_wasted() -> None:
    async def scenario() -> Metrics:
        metrics = Metrics()
        batcher = DynamicBatcher(FakeModel(seconds=0.1), 4, 0, 100, metrics)
        batcher.start()
        job = asyncio.ensure_future(batcher.submit([image(1), image(2)], RUN))
        await asyncio.sleep(0.03)  # computing
        job.cancel()
        await batcher.close(5)
        return metrics

    metrics = run(scenario())
    assert metrics.wasted_images.labels(reason="client_gone")._value.get() == 2
    assert metrics.batch_size._sum.get() == 2


def test_batch_cost_model_recovers_a_line_and_keeps_the_intercept_when_batches_are_all_full() -> None:
    cost = BatchCostModel(decay=1.0)
    for units in (1, 2, 4, 8, 2, 8):
        cost.observe(units, 0.05 + 0.02 * units)  # a hand-made line: 50 ms + 20 ms a unit
    assert cost.fixed_s == pytest.approx(0.05) and cost.per_unit_s == pytest.approx(0.02)
    assert cost.seconds(10, batches=2) == pytest.approx(2 * 0.05 + 10 * 0.02)
    assert cost.error_s == pytest.approx(0.0, abs=1e-12)
    saturated = BatchCostModel(decay=0.5)
    saturated.observe(1, 0.07)
    saturated.observe(8, 0.21)  # fixed 0.05, 0.02 a unit
    for _ in range(30):
        saturated.observe(8, 0.37)  # the machine slowed: full batches only from now on
    assert saturated.seconds(8) == pytest.approx(0.37, rel=1e-3)  # it follows the measurements
    assert 0 < saturated.fixed_s <= 0.05 + 1e-9  # and still charges a fixed part per batch
    assert not BatchCostModel().known and BatchCostModel().seconds(5) == 0.0


def test_work_units_count_network_input_pixels_passes_and_scales() -> None:
    # 640x480 at input size 256: 256 rows, 256 * 640 / 480 = 341.3 columns rounded up to 384 (a 64-multiple).
    assert work_units([(640, 480)], RunOptions(flip=False, scales=(1.0,)), 256) == pytest.approx(384 * 256 / 256**2)
    assert work_units([(640, 480)], RunOptions(flip=True, scales=(1.0,)), 256) == pytest.approx(2 * 1.5)
    assert work_units([(256, 256)] * 3, RunOptions(flip=False, scales=(1.0, 0.5)), 256) == pytest.approx(3 * (1 + 0.25))
