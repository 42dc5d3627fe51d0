"""The FastAPI application: model loading and warm-up, routers, request middleware, graceful drain."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np
import torch
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from pose.config import ModelConfig, load_model_config
from pose.pipeline import BatchPipeline
from pose.rescore import ScoringNet, load_scoring_net
from service.admission import ImageIntake
from service.backends import Backend, create_backend, describe_runtime
from service.batcher import DynamicBatcher
from service.deps import ServiceState
from service.errors import register_exception_handlers
from service.metrics import Metrics
from service.middleware import RequestMiddleware
from service.options import PoseOptions, RunOptions, resolve_options
from service.settings import Settings

log = logging.getLogger("pose.service")


def _load(settings: Settings) -> tuple[ModelConfig, Backend, BatchPipeline]:
    config = load_model_config(settings.model)
    backend = create_backend(config, settings)
    scoring_net: ScoringNet | None = None
    rescore_path = config.resolve(config.rescore_weights)
    if rescore_path is not None and rescore_path.is_file():
        scoring_net = load_scoring_net(rescore_path, config.keypoints.score_feature_dim).to(backend.device)
    else:
        log.warning("no scoring net at %s: poses are ranked by the mean joint score", rescore_path)
    return config, backend, BatchPipeline(config, backend, scoring_net, backend.device)


# Photo shapes whose network inputs are prepared before readiness when CUDA graphs are on: square, and
# the usual landscape and portrait (4:3). Other shapes are recorded on first use.
COMMON_SHAPES = ((640, 640), (480, 640), (640, 480))


def _warm_up(state: ServiceState) -> None:
    """Run every batch size the batcher can form (powers of two up to the maximum) once.

    With CUDA graphs, every common shape too, so their graphs are recorded before the pod is ready.
    """
    assert state.pipeline is not None
    size = state.settings.max_batch_size
    sizes = sorted({min(2**i, size) for i in range(size.bit_length() + 1)})
    graphs = getattr(state.backend, "graphs", None)
    shapes = COMMON_SHAPES if graphs is not None else COMMON_SHAPES[1:2]
    assert state.config is not None
    run = resolve_options(PoseOptions(), state.settings, state.config).run
    for h, w in shapes:
        image = np.zeros((h, w, 3), np.uint8)
        for n in sizes:
            state.pipeline.run([image] * n, run.flip, run.scales)
    _record_runtime(state)


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


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; the model loads and warms up in the lifespan, before readiness."""
    settings = settings or Settings()
    state = ServiceState(settings, Metrics())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.config, state.backend, state.pipeline = await asyncio.to_thread(_load, settings)
        _record_runtime(state)
        if settings.warmup:
            await asyncio.to_thread(_warm_up, state)
        state.batcher = DynamicBatcher(
            _run_batch(state),
            settings.max_batch_size,
            settings.max_queue_delay_ms / 1000,
            settings.queue_limit,
            state.metrics,
        )
        state.batcher.start()
        batcher = state.batcher
        state.intake = ImageIntake(settings, state.metrics, retry_after_s=lambda: batcher.last_batch_s)
        app.state.video = VideoState(settings)
        state.ready = True
        log.info("ready: %s on %s (%s backend)", settings.model, settings.device, settings.backend)
        try:
            yield
        finally:
            state.ready = False
            await state.batcher.close(settings.drain_timeout_s)
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
