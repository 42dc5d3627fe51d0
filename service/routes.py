"""HTTP routes: ``POST /v1/pose``, ``GET /v1/models``, health (also KServe v2 paths) and ``/metrics``."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pose.pipeline import PoseResult
from service.batch_cost import work_units
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
from service.imaging import SUPPORTED_TYPES, ImageHeader
from service.options import PoseOptions, RunOptions, resolve_options
from service.responses import build_response
from service.schemas import Health, ModelInfo, ModelsResponse, PoseRequest, PoseResponse, upload_body
from service.settings import Settings

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
        429: "Overloaded: the answer would come after the deadline, the queue is full or too many pixels are in "
        "flight (see Retry-After)",
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


async def submit_watching_client(
    request: Request, batcher: DynamicBatcher, images: list[np.ndarray], run: RunOptions, deadline: float, limit: float
) -> tuple[list[PoseResult], BatchInfo]:
    """Queue the images; give up (and free the queue slot) when the client disconnects.

    The batcher owns the deadline: it refuses or sheds a request it cannot answer in time, and answers
    every request it started. The wait here ends on its own only if the device stops answering at all.
    """
    if await request.is_disconnected():  # it left while the body was read or decoded: no slot for it
        raise ClientDisconnectedError("the client went away before its images were queued")
    work = asyncio.ensure_future(batcher.submit(images, run, deadline))
    watch = asyncio.ensure_future(_wait_for_disconnect(request))
    stuck_after = max(deadline - time.perf_counter(), 0.0) + limit
    try:
        done, _ = await asyncio.wait({work, watch}, timeout=stuck_after, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if work in done:
        return work.result()
    work.cancel()  # its future is cancelled: a waiting request leaves the queue, a computing one is not sent
    if watch in done:
        raise ClientDisconnectedError("the client went away before its result was ready")
    raise RequestTimeoutError(f"the model gave no answer within {limit:g} s after the deadline")


def request_deadline(start: float, settings: Settings, timeout: float | None) -> float:
    """The request's deadline: the client's ``X-Request-Timeout`` when shorter than the service's limit."""
    limit = settings.request_timeout_s
    return start + (min(timeout, limit) if timeout is not None else limit)


LEAST_WORK_UNITS = 1.0  # batch_cost.work_units of one square image, no flip, scale 1

REQUEST_TIMEOUT_HEADER = Header(
    alias="X-Request-Timeout",
    gt=0,
    description="seconds the client will wait for the answer (default and upper bound: the service's "
    "POSE_REQUEST_TIMEOUT_S); a request that cannot be answered in time is refused at once with 429",
)


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
    timeout: Annotated[float | None, REQUEST_TIMEOUT_HEADER] = None,
) -> PoseResponse:
    """Every person's keypoints in one or more images.

    Send the image as the raw body (image/jpeg, image/png, image/webp, image/bmp), as multipart/form-data (field
    `image`; several files allowed), or as JSON `{"images": [{"data": "<base64>"}], ...options}`.
    """
    start = time.perf_counter()
    deadline = request_deadline(start, settings, timeout)
    # Before the body is read: would even the least work a request can hold (one square image, one pass at
    # scale 1: a unit) be answered too late? Then refusing costs no read, no parse and no thread hop.
    batcher.check_admission(LEAST_WORK_UNITS, 1, deadline)
    body = await read_body(request, settings.max_body_bytes)
    payloads, options = await images_from_body(request, body, query, settings.max_images_per_request, intake.run)
    del body  # a JSON body's text is not needed once its images are decoded from base64
    resolved = resolve_options(options, settings, config)

    def admit(headers: list[ImageHeader]) -> None:  # before decoding: a late answer costs nothing
        units = work_units(((h.width, h.height) for h in headers), resolved.run, config.input.size)
        batcher.check_admission(units, len(headers), deadline)

    async with intake.admit(payloads, check=admit) as images:
        results, info = await submit_watching_client(
            request, batcher, images, resolved.run, deadline, settings.request_timeout_s
        )
        # Building the response (people, overlays) is CPU work: it runs in a thread so the event loop stays
        # free to admit the requests that form the next batch.
        response = await asyncio.to_thread(build_response, config, images, results, info, resolved, start)
    if await request.is_disconnected():
        metrics.wasted_images.labels(reason="client_gone").inc(len(images))
        raise ClientDisconnectedError("the client went away while its answer was being built")
    metrics.delivered_images.labels(deadline="met" if time.perf_counter() <= deadline else "missed").inc(len(images))
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
    return JSONResponse({"status": "not_ready", "reason": service.not_ready_reason}, status_code=503)


@health_router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text exposition"}},
    tags=["metrics"],
)
async def metrics(metrics: MetricsDep) -> Response:
    """Prometheus metrics: requests, latencies by stage, batch sizes, queue, in-flight pixels, backend."""
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
