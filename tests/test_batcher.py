"""The dynamic batcher with a fake model: batch formation, carry-over, cancelled requests, drain."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import torch

from pose.pipeline import BatchTimings, PoseResult
from service.batcher import DynamicBatcher
from service.errors import QueueFullError, ShuttingDownError
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
