"""Request bodies to image payloads: a raw image, multipart files or JSON with base64 images.

The body is read with its size capped while it streams in, so an oversized upload is refused before it
is held in memory; the image type is never taken from the client's Content-Type (see ``imaging``).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect

from service.errors import (
    ClientDisconnectedError,
    InvalidImageError,
    InvalidRequestError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from service.imaging import SUPPORTED_TYPES
from service.options import PoseOptions
from service.schemas import PoseRequest

__all__ = ["body_chunks", "images_from_body", "read_body"]


async def body_chunks(request: Request) -> AsyncIterator[bytes]:
    """The body as it streams in; a client that leaves mid-upload is a :class:`ClientDisconnectedError`
    (a 499 and one INFO access line, not an error with a traceback)."""
    try:
        async for chunk in request.stream():
            yield chunk
    except ClientDisconnect:
        raise ClientDisconnectedError("the client went away while sending the body") from None


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLargeError(f"body of {length} bytes exceeds the limit of {limit}")
    chunks, size = [], 0
    async for chunk in body_chunks(request):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


MULTIPART_FIELD = "image"


async def _multipart(request: Request, body: bytes, max_images: int) -> list[bytes]:
    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=max_images, max_fields=max_images + 8)
    except Exception:  # malformed multipart of any kind is the client's error
        raise InvalidRequestError("malformed multipart/form-data body (boundary or part headers)") from None
    files = []
    for name, value in form.multi_items():
        if name != MULTIPART_FIELD:
            raise InvalidRequestError(
                f"unexpected multipart field {name[:40]!r}; send each image as a file in field '{MULTIPART_FIELD}'"
            )
        if not isinstance(value, UploadFile):
            raise InvalidRequestError(f"multipart field '{MULTIPART_FIELD}' must be a file, not a text value")
        files.append(value)
    if not files:
        raise InvalidRequestError(f"multipart body has no file part (send the image as field '{MULTIPART_FIELD}')")
    return [await f.read() for f in files]


# Options a JSON body may set besides its images (PoseOptions' fields), each a scalar or a short list.
_JSON_SEPARATORS_PER_BODY = 16


def _check_json_size(body: bytes, max_images: int) -> None:
    """Refuse, before parsing, a JSON body holding more values than any valid request.

    A valid body's strings are base64 and option names, which hold no commas, so its commas number at most
    one per image plus a few for the options. Counting them is a pass of ``bytes.count`` over the body,
    where parsing a body of a million tiny items would hold the interpreter for seconds and allocate many
    times its size.
    """
    commas = body.count(b",")
    if commas > max_images + _JSON_SEPARATORS_PER_BODY:
        raise InvalidRequestError(
            f"the JSON body holds at least {commas + 1} values; a request carries at most {max_images} images "
            "and the options"
        )


def _json(body: bytes, query: PoseOptions, max_images: int) -> tuple[list[bytes], PoseOptions]:
    _check_json_size(body, max_images)
    try:
        parsed = PoseRequest.model_validate_json(body)
    except ValidationError as err:
        errors = err.errors(include_url=False, include_input=False)
        if any(e["type"] == "json_invalid" for e in errors):
            raise InvalidRequestError(f"body is not valid JSON: {errors[0]['msg']}") from None
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from None
    _check_count(len(parsed.images), max_images)  # before any base64 is decoded
    images = []
    for i, item in enumerate(parsed.images):
        try:
            images.append(base64.b64decode(item.data, validate=True))
        except (binascii.Error, ValueError):
            raise InvalidImageError(f"images[{i}].data is not valid base64") from None
    body_options = parsed.model_dump(exclude_unset=True, exclude={"images"})
    return images, query.model_copy(update=body_options)


def _check_count(count: int, max_images: int) -> None:
    if count > max_images:
        raise InvalidRequestError(f"{count} images in one request; the limit is {max_images}")


async def images_from_body(
    request: Request,
    body: bytes,
    query: PoseOptions,
    max_images: int,
    offload: Callable[..., Awaitable[Any]],
) -> tuple[list[bytes], PoseOptions]:
    """The request's image payloads and its options (a JSON body's options override the query's).

    ``offload`` runs CPU work (parsing a JSON body of up to the body limit) off the event loop.
    """
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media in SUPPORTED_TYPES or media == "application/octet-stream":
        return [body], query
    if media == "multipart/form-data":
        payloads = await _multipart(request, body, max_images)
        _check_count(len(payloads), max_images)
        return payloads, query
    if media == "application/json":
        return await offload(_json, body, query, max_images)
    raise UnsupportedMediaTypeError(
        f"content type {media[:60] or '(none)'} is not supported; send {', '.join(SUPPORTED_TYPES)}, "
        "multipart/form-data or application/json"
    )
