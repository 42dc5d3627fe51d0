"""HTTP routes: ``POST /v1/pose``, ``GET /v1/models``, health (also KServe v2 paths) and ``/metrics``."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pose.pipeline import PoseResult
from service.batcher import BatchInfo, DynamicBatcher
from service.bodies import images_from_body, read_body
from service.deps import (
    ApiKey,
    BatcherDep,
    IntakeDep,
    MetricsDep,
    ModelDep,
    RuntimeDep,
    ServiceDep,
    SettingsDep,
)
from service.errors import ClientDisconnectedError, RequestTimeoutError
from service.imaging import SUPPORTED_TYPES
from service.options import PoseOptions, RunOptions, resolve_options
from service.responses import build_response
from service.schemas import Health, ModelInfo, ModelsResponse, PoseRequest, PoseResponse, upload_body

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {
        "description": text,
        "content": {"application/json": {"example": {"error": {"code": "...", "message": "..."}}}},
    }
    for code, text in {
        400: "Bad image or request",
        401: "Missing or wrong API key",
        413: "Body or image too large",
        415: "Unsupported content type",
        422: "Invalid options",
        429: "Queue full (see Retry-After)",
        503: "Not ready or shutting down",
        504: "Request timed out",
    }.items()
}

# The route reads the body itself (four encodings, a size cap while streaming), so it declares the body here.
POSE_BODY = upload_body(SUPPORTED_TYPES, "image", PoseRequest)

pose_router = APIRouter(prefix="/v1", tags=["pose"])
models_router = APIRouter(prefix="/v1", tags=["models"])
health_router = APIRouter(tags=["health"])


async def _wait_for_disconnect(request: Request) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(0.05)


async def _submit(
    request: Request,
    batcher: DynamicBatcher,
    images: list[np.ndarray],
    run: RunOptions,
    remaining: float,
    limit: float,
) -> tuple[list[PoseResult], BatchInfo]:
    """Queue the images; give up (and free the batch slot) on timeout or when the client disconnects."""
    if await request.is_disconnected():  # it left while the body was read or decoded: no slot for it
        raise ClientDisconnectedError("the client went away before its images were queued")
    work = asyncio.ensure_future(batcher.submit(images, run))
    watch = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait({work, watch}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if work in done:
        return work.result()
    work.cancel()  # its future is cancelled, so the worker skips it
    if watch in done:
        raise ClientDisconnectedError("the client went away before its result was ready")
    raise RequestTimeoutError(f"no result within {limit:g} s")


@pose_router.post("/pose", response_model=PoseResponse, responses=ERRORS, openapi_extra=POSE_BODY)
async def estimate_pose(
    request: Request,
    _: ApiKey,
    settings: SettingsDep,
    config: ModelDep,
    batcher: BatcherDep,
    intake: IntakeDep,
    metrics: MetricsDep,
    query: Annotated[PoseOptions, Query()],
) -> PoseResponse:
    """Every person's keypoints in one or more images.

    Send the image as the raw body (image/jpeg, image/png, image/webp, image/bmp), as multipart/form-data (field
    `image`; several files allowed), or as JSON `{"images": [{"data": "<base64>"}], ...options}`.
    """
    start = time.perf_counter()
    body = await read_body(request, settings.max_body_bytes)
    payloads, options = await images_from_body(request, body, query, settings.max_images_per_request, intake.run)
    del body  # a JSON body's text is not needed once its images are decoded from base64
    resolved = resolve_options(options, settings, config)
    async with intake.admit(payloads) as images:
        remaining = settings.request_timeout_s - (time.perf_counter() - start)
        results, info = await _submit(
            request, batcher, images, resolved.run, max(remaining, 0.001), settings.request_timeout_s
        )
        # Building the response (people, overlays) is CPU work: it runs in a thread so the event loop stays
        # free to admit the requests that form the next batch.
        response = await asyncio.to_thread(build_response, config, images, results, info, resolved, start)
    metrics.images.inc(len(images))
    for r in response.results:
        metrics.persons.observe(len(r.people))
    return response


@models_router.get("/models", response_model=ModelsResponse)
async def list_models(_: ApiKey, settings: SettingsDep, config: ModelDep, runtime: RuntimeDep) -> ModelsResponse:
    """The loaded model, the defaults a request gets when it sets no options, and what the backend runs."""
    defaults = resolve_options(PoseOptions(), settings, config)
    return ModelsResponse(
        models=[
            ModelInfo(
                name=config.name,
                version=config.version,
                description=config.description,
                dataset=config.keypoints.dataset,
                keypoints=config.keypoints.names,
                skeleton=config.keypoints.skeleton,
                input_size=config.input.size,
                flip=defaults.run.flip,
                scales=list(defaults.run.scales),
                score_threshold=defaults.score_threshold,
                max_people=defaults.max_people,
                backend=settings.backend,
                device=settings.device,
                max_batch_size=settings.max_batch_size,
                runtime=runtime,
            )
        ]
    )


@health_router.get("/health/live", response_model=Health)
@health_router.get("/v2/health/live", response_model=Health)
async def live() -> Health:
    """The process is up (liveness probe; ``/v2/...`` is the KServe/Triton spelling)."""
    return Health(status="live")


@health_router.get("/health/ready", response_model=Health, responses={503: {"model": Health}})
@health_router.get("/v2/health/ready", response_model=Health, responses={503: {"model": Health}})
async def ready(service: ServiceDep) -> Response | Health:
    """The model is loaded and warmed up on every batch size (readiness probe; ``/v2/...`` is the
    KServe/Triton spelling)."""
    if service.ready:
        return Health(status="ready")
    return JSONResponse({"status": "not_ready"}, status_code=503)


@health_router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text exposition"}},
    tags=["metrics"],
)
async def metrics(metrics: MetricsDep) -> Response:
    """Prometheus metrics: requests, latencies by stage, batch sizes, queue, in-flight pixels, backend."""
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
