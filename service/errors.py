"""Typed errors and the one handler that turns them into ``{"error": {"code", "message"}}`` responses."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.logs import request_id_var

log = logging.getLogger("pose.service")


class ServiceError(Exception):
    """Base of every error a client can cause or see; carries its HTTP status and a stable code."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers


class InvalidImageError(ServiceError):
    status, code = 400, "invalid_image"


class InvalidRequestError(ServiceError):
    status, code = 400, "invalid_request"


class InvalidOptionError(ServiceError):
    """An option that passed its own type check but not the loaded model's (same status as the former)."""

    status, code = 422, "invalid_request"


class InvalidVideoError(ServiceError):
    status, code = 400, "invalid_video"


class NotFoundError(ServiceError):
    status, code = 404, "not_found"


class UnsupportedMediaTypeError(ServiceError):
    status, code = 415, "unsupported_media_type"


class PayloadTooLargeError(ServiceError):
    status, code = 413, "payload_too_large"


class ImageTooLargeError(ServiceError):
    status, code = 413, "image_too_large"


class VideoTooLargeError(ServiceError):
    """Too long, too many frames or too many pixels a frame: refused from the headers, before decoding."""

    status, code = 413, "video_too_large"


class UnauthorizedError(ServiceError):
    status, code = 401, "unauthorized"


class QueueFullError(ServiceError):
    status, code = 429, "queue_full"


class OverloadedError(ServiceError):
    """The request could not be answered before its deadline: refused on arrival, or shed while it waited,
    either way before any work was spent on it."""

    status, code = 429, "overloaded"


class BusyError(ServiceError):
    """Too many pixels in flight: the request was refused before any of its images was decoded."""

    status, code = 429, "busy"


class IdleStreamError(ServiceError):
    """A stream that sent nothing for ``POSE_STREAM_IDLE_TIMEOUT_S``: its slot goes to someone else."""

    status, code = 408, "idle_timeout"


class TooManyStreamsError(ServiceError):
    status, code = 429, "too_many_streams"


class ClientDisconnectedError(ServiceError):
    status, code = 499, "client_closed_request"  # nginx's convention: nobody reads it, the metrics label does


class NotReadyError(ServiceError):
    status, code = 503, "not_ready"


class ShuttingDownError(ServiceError):
    status, code = 503, "shutting_down"


class RequestTimeoutError(ServiceError):
    status, code = 504, "timeout"


MAX_MESSAGE_CHARS = 300  # a message names the problem; it never carries the input back


def error_body(code: str, message: str) -> dict:
    """The one error shape; the request id lets a client's report be found in the logs."""
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 1] + "\u2026"
    return {"error": {"code": code, "message": message, "request_id": request_id_var.get()}}


def validation_details(errors: Sequence[Any]) -> str:
    """Pydantic's errors as one line, ``where: what`` each: the message of a 422 and of a stream's bad option."""
    return "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in errors)


def register_exception_handlers(app: FastAPI) -> None:
    """Map our errors, validation errors and unknown routes to one JSON shape."""

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body("invalid_request", validation_details(exc.errors())), status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        # Runs outside the request middleware (Starlette's outermost layer), so it sets the id header itself.
        log.exception("unexpected error", exc_info=exc)  # the details go to the log, not to the client
        return JSONResponse(
            error_body("internal_error", "internal error; the service's log has the details under this request id"),
            status_code=500,
            headers={"X-Request-ID": request_id_var.get()},
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            error_body(f"http_{exc.status_code}", str(exc.detail)),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )
