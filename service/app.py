"""The FastAPI application: model loading and warm-up, routers, request middleware, graceful drain."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from pose.config import load_model_config
from service.admission import ImageIntake
from service.backends import describe_runtime
from service.batch_cost import BatchCostModel
from service.batcher import DynamicBatcher
from service.deps import ServiceState
from service.errors import register_exception_handlers
from service.memory import IdleTrimmer
from service.metrics import Metrics
from service.middleware import RequestMiddleware
from service.options import RunOptions
from service.settings import Settings
from service.startup import Loaded, faster_backend_later, load, units_of, warm_up

log = logging.getLogger("pose.service")


def _activity(metrics: Metrics) -> float:
    """Grows with every request answered and batch run: what the idle heap trim waits to see stop."""
    sample = metrics.registry.get_sample_value
    return (sample("pose_request_duration_seconds_count") or 0.0) + (sample("pose_batch_size_count") or 0.0)


def _busy(state: ServiceState) -> bool:
    inflight = state.metrics.registry.get_sample_value("pose_inflight_requests") or 0.0
    return inflight > 0 or (state.batcher is not None and state.batcher.busy)


async def _start(state: ServiceState, tasks: list[asyncio.Task], background: bool) -> None:
    """Load, warm up, start the batcher and turn ready; on a first start on a CPU, then switch to ONNX Runtime.

    In the background a failure is logged and kept in ``state.failed`` (the server then exits with status 1)
    instead of being raised into a lifespan that has already returned.
    """
    settings = state.settings
    try:
        state.preparing = "loading the model"
        config = await asyncio.to_thread(load_model_config, settings.model)
        later = faster_backend_later(config, settings)
        if later:
            state.preparing = "loading the torch network (ONNX Runtime follows once its graph is exported and checked)"
        elif settings.backend == "auto" and settings.device.startswith("cpu"):
            state.preparing = "loading the model and checking ONNX Runtime against torch"
        loaded = await asyncio.to_thread(load, settings, config, "torch" if later else None)
        state.config, state.backend, state.pipeline = loaded.config, loaded.backend, loaded.pipeline
        _record_runtime(state)
        state.preparing = "warming up every batch size"
        cost = await asyncio.to_thread(warm_up, loaded, settings) if settings.warmup else BatchCostModel()
        _record_runtime(state)
        state.batcher = DynamicBatcher(
            _run_batch(state),
            settings.max_batch_size,
            settings.max_queue_delay_ms / 1000,
            settings.queue_limit,
            state.metrics,
            cost=cost,
            units_of=units_of(loaded.config),
        )
        state.batcher.start()
        batcher = state.batcher
        state.intake = ImageIntake(
            settings, state.metrics, retry_after_s=lambda: batcher.projected_finish(0.0, 0) - time.perf_counter()
        )
        state.trimmer = IdleTrimmer(activity=lambda: _activity(state.metrics), busy=lambda: _busy(state))
        state.trimmer.start()
        state.preparing = None
        state.ready = True
        log.info("ready: %s on %s (%s backend)", settings.model, settings.device, loaded.backend.name)
    except Exception as err:
        if not background:
            raise
        state.preparing = None
        state.failed = f"{type(err).__name__}: {err}"[:300]
        log.error("the model could not be prepared: %s", state.failed, exc_info=err)
        return
    if later:
        tasks.append(asyncio.create_task(_switch_to_faster_backend(state, loaded), name="pose-faster-backend"))


async def _switch_to_faster_backend(state: ServiceState, serving: Loaded) -> None:
    """Export and check the portable graph while torch serves, then run the next batches on ONNX Runtime."""
    settings = state.settings
    log.info("serving with torch while the ONNX Runtime graph is exported and checked (first start)")
    try:
        faster = await asyncio.to_thread(load, settings, serving.config)
        if faster.backend.name == "torch":  # auto kept torch: say why, and keep the network that is warm
            reason = describe_runtime(faster.backend).backend_fallback
            log.warning("keeping torch: %s", reason)
            state.runtime = describe_runtime(serving.backend).model_copy(update={"backend_fallback": reason})
            state.metrics.record_runtime(state.runtime.backend, settings.device, state.runtime)
            return
        cost = await asyncio.to_thread(warm_up, faster, settings) if settings.warmup else BatchCostModel()
    except Exception:
        log.exception("keeping torch: the ONNX Runtime graph could not be prepared")
        return
    assert state.batcher is not None
    state.pipeline, state.backend = faster.pipeline, faster.backend  # the batcher's next batch runs on it
    state.batcher.cost = cost
    _record_runtime(state)
    log.info("switched to the %s backend for the next batches", faster.backend.name)


def _record_runtime(state: ServiceState) -> None:
    assert state.backend is not None
    state.runtime = describe_runtime(state.backend)
    state.metrics.record_runtime(state.runtime.backend, state.settings.device, state.runtime)


def _run_batch(state: ServiceState):  # noqa: ANN202 - a closure with the batcher's signature
    def run(images, options: RunOptions):  # noqa: ANN001, ANN202
        assert state.pipeline is not None
        out = state.pipeline.run(images, options.flip, options.scales)
        if torch.cuda.is_available() and state.pipeline.device.type == "cuda":
            state.metrics.gpu_memory.set(torch.cuda.memory_allocated(state.pipeline.device))
            _record_runtime(state)  # graphs recorded on first use of a shape, or dropped
        return out

    return run


def create_app(settings: Settings | None = None, *, background_start: bool = False) -> FastAPI:
    """Build the app. The model loads and warms up in the lifespan, before readiness; with
    ``background_start`` (``python -m service``) the lifespan returns at once, so the port opens and the
    health endpoints answer (readiness: 503 with what is being prepared) while the model is prepared."""
    settings = settings or Settings()
    state = ServiceState(settings, Metrics())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.video = VideoState(settings)
        tasks: list[asyncio.Task] = []
        starting = asyncio.create_task(_start(state, tasks, background_start), name="pose-start")
        tasks.append(starting)
        if not background_start:
            await starting
        try:
            yield
        finally:
            state.ready = False
            for task in tasks:
                task.cancel()
            if state.trimmer is not None:
                state.trimmer.stop()
            if state.batcher is not None:
                await state.batcher.close(settings.drain_timeout_s)
            if state.intake is not None:
                state.intake.close()
            app.state.video.close()

    app = FastAPIOffline(  # /docs and /redoc from assets in the package, not a CDN
        title="Pose estimation service",
        version="1",
        description="Every person's keypoints in an image: bottom-up HRNet with heatmap-guided adaptive "
        "keypoint estimates, batched on the device.",
        lifespan=lifespan,
        static_url="/static/docs",
    )
    app.state.service = state
    register_exception_handlers(app)

    app.add_middleware(RequestMiddleware, metrics=state.metrics)

    from service.demo import mount_demo
    from service.routes import health_router, models_router, pose_router
    from service.stream import stream_router
    from service.video import VideoState, video_router

    app.include_router(pose_router)
    app.include_router(video_router)
    app.include_router(stream_router)
    app.include_router(models_router)
    app.include_router(health_router)
    mount_demo(app)

    return app


def start_drain(app: FastAPI) -> None:
    """What SIGTERM starts at once: readiness turns 503 and the batcher drains within ``drain_timeout_s``
    (the lifespan's shutdown then finds it done, so the drain is counted once)."""
    state: ServiceState = app.state.service
    state.ready = False
    state.shutting_down = True
    if state.batcher is not None:
        state.batcher.drain(state.settings.drain_timeout_s)
