"""HTTP routes: ``POST /v1/pose``, ``GET /v1/models``, health (also KServe v2 paths) and ``/metrics``."""

from __future__ import annotations

import asyncio
import base64
import binascii
import secrets
import time
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from pose.config import ModelConfig
from pose.draw import draw_people, encode_image
from pose.pipeline import PoseResult
from pose.results import to_people
from service.batcher import BatchInfo, DynamicBatcher
from service.errors import (
    ClientDisconnectedError,
    InvalidImageError,
    InvalidRequestError,
    NotReadyError,
    PayloadTooLargeError,
    RequestTimeoutError,
    ServiceError,
    UnauthorizedError,
    UnsupportedMediaTypeError,
)
from service.imaging import SUPPORTED_TYPES, decode_image
from service.schemas import (
    CocoResult,
    Health,
    ImageResult,
    Keypoint,
    ModelInfo,
    ModelsResponse,
    Person,
    PoseRequest,
    PoseResponse,
    Timings,
)

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
        422: "Invalid parameters",
        429: "Queue full (see Retry-After)",
        503: "Not ready or shutting down",
        504: "Request timed out",
    }.items()
}

_BINARY = {"schema": {"type": "string", "format": "binary"}}
POSE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            **{t: _BINARY for t in SUPPORTED_TYPES},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"image": {"type": "string", "format": "binary"}},
                    "required": ["image"],
                }
            },
            "application/json": {"schema": {"$ref": "#/components/schemas/PoseRequest"}},
        },
    }
}


def _state(request: Request):  # noqa: ANN202 - the app's ServiceState
    return request.app.state.service


def require_api_key(request: Request) -> None:
    """When an API key is configured, accept it as ``X-API-Key`` or ``Authorization: Bearer``."""
    expected = _state(request).settings.api_key
    if expected is None:
        return
    given = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    if not given or not secrets.compare_digest(given.encode(), expected.encode()):
        raise UnauthorizedError("missing or wrong API key")


ApiKey = Annotated[None, Depends(require_api_key)]
pose_router = APIRouter(prefix="/v1", tags=["pose"])
models_router = APIRouter(prefix="/v1", tags=["models"])
health_router = APIRouter(tags=["health"])


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLargeError(f"body of {length} bytes exceeds the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _images_from_request(
    request: Request, body: bytes, max_images: int
) -> tuple[list[bytes], PoseRequest | None]:
    """The raw image payloads of a request and, for JSON, its body's options."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media in SUPPORTED_TYPES or media == "application/octet-stream":
        return [body], None
    if media == "multipart/form-data":

        async def replay() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=max_images, max_fields=max_images + 8)
        except Exception as err:  # malformed multipart of any kind is the client's error
            raise InvalidRequestError(f"malformed multipart body: {err}") from None
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not files:
            raise InvalidRequestError("multipart body has no file part (send the image as field 'image')")
        return [await f.read() for f in files], None
    if media == "application/json":
        try:
            parsed = PoseRequest.model_validate_json(body)
        except ValidationError as err:
            raise InvalidRequestError(f"invalid JSON body: {err.errors(include_url=False)}") from None
        images = []
        for i, item in enumerate(parsed.images):
            try:
                images.append(base64.b64decode(item.data, validate=True))
            except (binascii.Error, ValueError):
                raise InvalidImageError(f"images[{i}].data is not valid base64") from None
        return images, parsed
    raise UnsupportedMediaTypeError(
        f"content type {media or '(none)'} is not supported; send {', '.join(SUPPORTED_TYPES)}, "
        "multipart/form-data or application/json"
    )


def _finite(values: np.ndarray) -> np.ndarray:
    return np.nan_to_num(values, nan=0.0, posinf=3.0e38, neginf=-3.0e38)


def _image_result(
    index: int,
    image: np.ndarray,
    poses: PoseResult,
    names: list[str],
    skeleton: list[tuple[int, int]],
    score_threshold: float,
    max_people: int,
    overlay: bool,
    coco: bool,
) -> ImageResult:
    people = to_people(poses.keypoints, poses.scores, poses.boxes, min_score=score_threshold, max_people=max_people)
    out = [
        Person(
            keypoints=[
                Keypoint(name=n, x=x, y=y, score=s)
                for n, (x, y, s) in zip(names, _finite(np.array(p.keypoints)), strict=True)
            ],
            score=float(_finite(np.array(p.score))),
            bbox=tuple(_finite(np.array(p.box)).tolist()),
        )
        for p in people
    ]
    return ImageResult(
        width=image.shape[1],
        height=image.shape[0],
        people=out,
        coco=[
            CocoResult(
                image_id=index,
                keypoints=_finite(np.array(p.keypoints)).ravel().tolist(),
                score=float(_finite(np.array(p.score))),
            )
            for p in people
        ]
        if coco
        else None,
        overlay_jpeg_base64=base64.b64encode(encode_image(draw_people(image, people, skeleton))).decode()
        if overlay
        else None,
    )


def _response(
    cfg: ModelConfig,
    images: list[np.ndarray],
    results: list[PoseResult],
    info: BatchInfo,
    score_threshold: float,
    max_people: int,
    overlay: bool,
    coco: bool,
    start: float,
) -> PoseResponse:
    return PoseResponse(
        model=cfg.name,
        version=cfg.version,
        results=[
            _image_result(
                i,
                im,
                res,
                cfg.keypoints.names,
                cfg.keypoints.skeleton,
                score_threshold,
                max_people,
                overlay,
                coco,
            )
            for i, (im, res) in enumerate(zip(images, results, strict=True))
        ],
        timings=Timings(
            queue_ms=1000 * info.queue_s,
            inference_ms=1000 * info.inference_s,
            postprocess_ms=1000 * info.postprocess_s,
            total_ms=1000 * (time.perf_counter() - start),
            batch_size=info.batch_size,
        ),
    )


async def _wait_for_disconnect(request: Request) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(0.05)


async def _submit(
    request: Request,
    batcher: DynamicBatcher,
    images: list[np.ndarray],
    flip: bool | None,
    remaining: float,
    limit: float,
) -> tuple[list[PoseResult], BatchInfo]:
    """Queue the images; give up (and free the batch slot) on timeout or when the client disconnects."""
    work = asyncio.ensure_future(batcher.submit(images, flip))
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
    score_threshold: Annotated[float, Query(ge=0, description="drop poses scoring below this")] = 0.0,
    max_people: Annotated[int, Query(ge=1, le=30, description="at most this many poses per image, best first")] = 30,
    flip: Annotated[bool | None, Query(description="flip test (default: the service's)")] = None,
    overlay: Annotated[bool, Query(description="return a skeleton overlay JPEG (base64)")] = False,
    format: Annotated[Literal["people", "coco"], Query(description="'coco' adds COCO results entries")] = "people",
) -> PoseResponse:
    """Every person's keypoints in one or more images.

    Send the image as the raw body (image/jpeg, image/png, image/webp), as multipart/form-data (field
    `image`; several files allowed), or as JSON `{"images": [{"data": "<base64>"}], ...options}`.
    """
    start = time.perf_counter()
    state = _state(request)
    settings = state.settings
    if not state.ready or state.batcher is None:
        raise NotReadyError("the model is not loaded yet")
    body = await _read_body(request, settings.max_body_bytes)
    payloads, parsed = await _images_from_request(request, body, settings.max_images_per_request)
    if len(payloads) > settings.max_images_per_request:
        raise InvalidRequestError(
            f"{len(payloads)} images in one request; the limit is {settings.max_images_per_request}"
        )
    if parsed is not None:
        score_threshold = parsed.score_threshold if parsed.score_threshold is not None else score_threshold
        max_people = parsed.max_people or max_people
        flip = parsed.flip if parsed.flip is not None else flip
        overlay = parsed.overlay if parsed.overlay is not None else overlay
        format = parsed.format or format
    images = []
    for i, payload in enumerate(payloads):
        try:
            images.append(
                await asyncio.to_thread(
                    decode_image, payload, settings.max_image_pixels, settings.min_image_side, settings.max_aspect_ratio
                )
            )
        except ServiceError as err:
            err.message = f"image {i}: {err.message}" if len(payloads) > 1 else err.message
            raise
    remaining = settings.request_timeout_s - (time.perf_counter() - start)
    results, info = await _submit(
        request, state.batcher, images, flip, max(remaining, 0.001), settings.request_timeout_s
    )
    # Building the response (people, overlays) is CPU work: it runs in a thread so the event loop stays
    # free to admit the requests that form the next batch.
    response = await asyncio.to_thread(
        _response, state.config, images, results, info, score_threshold, max_people, overlay, format == "coco", start
    )
    state.metrics.images.inc(len(images))
    for r in response.results:
        state.metrics.persons.observe(len(r.people))
    return response


@models_router.get("/models", response_model=ModelsResponse)
async def list_models(request: Request, _: ApiKey) -> ModelsResponse:
    """The loaded model and its configuration."""
    state = _state(request)
    if state.config is None:
        raise NotReadyError("the model is not loaded yet")
    cfg, settings = state.config, state.settings
    return ModelsResponse(
        models=[
            ModelInfo(
                name=cfg.name,
                version=cfg.version,
                description=cfg.description,
                dataset=cfg.keypoints.dataset,
                keypoints=cfg.keypoints.names,
                skeleton=cfg.keypoints.skeleton,
                input_size=cfg.input.size,
                flip=cfg.test.flip if settings.flip is None else settings.flip,
                scales=settings.scales or cfg.test.scales,
                backend=settings.backend,
                device=settings.device,
                max_batch_size=settings.max_batch_size,
            )
        ]
    )


@health_router.get("/health/live", response_model=Health)
@health_router.get("/v2/health/live", response_model=Health, include_in_schema=False)
async def live() -> Health:
    """The process is up (liveness probe)."""
    return Health(status="live")


@health_router.get("/health/ready", response_model=Health, responses={503: {"model": Health}})
@health_router.get("/v2/health/ready", response_model=Health, include_in_schema=False)
async def ready(request: Request) -> Response | Health:
    """The model is loaded and warmed up on every batch size (readiness probe)."""
    if _state(request).ready:
        return Health(status="ready")
    return JSONResponse({"status": "not_ready"}, status_code=503)


@health_router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus exposition."""
    return Response(generate_latest(_state(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)
