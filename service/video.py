"""``POST /v1/pose/video``: a video upload in, NDJSON out (one line per frame with track ids, then a summary).

The upload is written to a temporary file with its size capped while it streams in, and its headers are
checked (length, frame count, frame size) before any frame is decoded, so an over-long video costs a
probe, not a decode. Frames are decoded in a thread of their own into a small queue and go to the same
batcher as images, in groups, each group holding its pixels in the shared in-flight budget, so a video
competes fairly with photo requests instead of beside them. Lines are sent as soon as each group is
tracked; the optional overlay video is kept for a while and served by ``GET .../overlay.mp4``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import re
import shutil
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, StreamingResponse
from starlette.datastructures import UploadFile

from pose.config import ModelConfig
from pose.draw import draw_people, track_colors
from pose.errors import VideoReadError
from pose.pipeline import PoseResult
from pose.results import Person, frame_record
from pose.tracking import PoseTracker, TrackedPoses, TrackerConfig
from pose.video import VideoFrame, VideoInfo, VideoWriter, iter_frames, probe
from service.batcher import DynamicBatcher
from service.bodies import body_chunks
from service.deps import ApiKey, BatcherDep, IntakeDep, MetricsDep, ModelDep, SettingsDep
from service.errors import (
    BusyError,
    ClientDisconnectedError,
    InvalidRequestError,
    InvalidVideoError,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    QueueFullError,
    ServiceError,
    UnsupportedMediaTypeError,
    VideoTooLargeError,
    error_body,
)
from service.imaging import sniff_type
from service.options import ResolvedOptions, VideoOptions, resolve_options
from service.routes import ERRORS
from service.schemas import (
    OverlayInfo,
    VideoFrameResult,
    VideoSummary,
    VideoSummaryLine,
    inline_json_schema,
    upload_body,
)
from service.settings import Settings

__all__ = ["OverlayStore", "VideoState", "video_router"]

log = logging.getLogger("pose.service")

VIDEO_TYPES = ("video/mp4", "video/webm", "video/quicktime", "video/x-matroska", "application/octet-stream")
MULTIPART_FIELDS = ("file", "video")
IMAGE_DEMUXERS = ("image2",)  # and every "*_pipe": FFmpeg opens a still image as a 1-frame video
NDJSON = "application/x-ndjson"
_ID = re.compile(r"^[0-9a-f]{32}$")


class OverlayStore:
    """Rendered overlay videos on local disk, each kept ``ttl_s`` and at most ``max_files`` at once."""

    def __init__(self, root: Path, ttl_s: float, max_files: int) -> None:
        self.root = root
        self.ttl_s = ttl_s
        self.max_files = max_files
        self._born: dict[str, float] = {}  # id -> time published

    def reserve(self) -> tuple[str, Path]:
        """A fresh id and the path to write its video to (not served until :meth:`publish`)."""
        video_id = uuid.uuid4().hex
        return video_id, self.root / f"{video_id}.part.mp4"

    def publish(self, video_id: str) -> None:
        (self.root / f"{video_id}.part.mp4").replace(self.root / f"{video_id}.mp4")
        self._born[video_id] = time.monotonic()
        self.prune()

    def prune(self) -> None:
        """Delete expired videos, then the oldest beyond the count."""
        now = time.monotonic()
        for video_id, born in sorted(self._born.items(), key=lambda kv: kv[1]):
            if now - born > self.ttl_s or len(self._born) > self.max_files:
                self._born.pop(video_id)
                (self.root / f"{video_id}.mp4").unlink(missing_ok=True)

    def path(self, video_id: str) -> Path:
        """The published video, or 404 (unknown, expired or evicted)."""
        self.prune()
        if not _ID.match(video_id) or video_id not in self._born:
            raise NotFoundError(f"no overlay video {video_id[:40]!r}: unknown, or older than {self.ttl_s:g} s")
        return self.root / f"{video_id}.mp4"

    def discard(self, video_id: str) -> None:
        (self.root / f"{video_id}.part.mp4").unlink(missing_ok=True)


@dataclass
class VideoState:
    """What the video routes share: a temporary folder, the overlay store and the decode slots."""

    settings: Settings
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="pose-video-")))
    active: int = 0

    def __post_init__(self) -> None:
        (self.root / "overlays").mkdir(exist_ok=True)
        (self.root / "uploads").mkdir(exist_ok=True)
        s = self.settings
        self.overlays = OverlayStore(self.root / "overlays", s.video_overlay_ttl_s, s.video_overlay_max_files)

    def acquire(self) -> None:
        """Take a decode slot or refuse with 429: each video holds a thread and a file while it runs."""
        if self.active >= self.settings.video_max_concurrent:
            raise BusyError(
                f"{self.active} videos are being processed (limit {self.settings.video_max_concurrent})",
                headers={"Retry-After": "5"},
            )
        self.active += 1

    def release(self) -> None:
        self.active -= 1

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def get_video_state(request: Request) -> VideoState:
    return request.app.state.video


VideoDep = Annotated[VideoState, Depends(get_video_state)]


# ---- upload ---------------------------------------------------------------------------------------------


async def save_upload(request: Request, limit: int, dest: Path) -> None:
    """The video of the body (raw, or the ``file`` part of a multipart form) in ``dest``; 413 past ``limit``."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLargeError(f"body of {length} bytes exceeds the video limit of {limit}")
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    received = 0

    async def capped() -> AsyncIterator[bytes]:
        nonlocal received
        async for chunk in body_chunks(request):
            received += len(chunk)
            if received > limit:
                raise PayloadTooLargeError(f"body exceeds the video limit of {limit} bytes")
            yield chunk

    if media in VIDEO_TYPES:
        with dest.open("wb") as f:
            async for chunk in capped():
                f.write(chunk)
        return
    if media != "multipart/form-data":
        raise UnsupportedMediaTypeError(
            f"content type {media[:60] or '(none)'} is not supported; send the video as the body "
            f"({', '.join(VIDEO_TYPES[:3])}) or as multipart/form-data field 'file'"
        )
    chunks = capped()

    async def receive() -> dict[str, Any]:
        try:
            return {"type": "http.request", "body": await chunks.__anext__(), "more_body": True}
        except StopAsyncIteration:
            return {"type": "http.request", "body": b"", "more_body": False}

    try:
        form = await Request(request.scope, receive).form(max_files=1, max_fields=8)
    except (PayloadTooLargeError, ClientDisconnectedError):
        raise
    except Exception:  # malformed multipart of any kind is the client's error
        raise InvalidRequestError("malformed multipart/form-data body (boundary or part headers)") from None
    try:
        files = [v for k, v in form.multi_items() if k in MULTIPART_FIELDS and isinstance(v, UploadFile)]
        if not files:
            raise InvalidRequestError("multipart body has no video file part (send it as field 'file')")
        with dest.open("wb") as f:
            await asyncio.to_thread(shutil.copyfileobj, files[0].file, f)
    finally:
        await form.close()


def check_video(path: Path, settings: Settings) -> VideoInfo:
    """The headers, refusing what should not be decoded: 400 unreadable, 413 too long or too big a frame."""
    with path.open("rb") as f:
        head = f.read(16)
    with contextlib.suppress(UnsupportedMediaTypeError):  # not an image: as it should be
        kind = sniff_type(head)
        raise UnsupportedMediaTypeError(f"the upload is a {kind} image, not a video; send images to POST /v1/pose")
    try:
        info = probe(path)
    except VideoReadError as err:
        raise InvalidVideoError(f"cannot read the video: {err}") from None
    if info.container in IMAGE_DEMUXERS or info.container.endswith("_pipe"):
        raise UnsupportedMediaTypeError(f"the upload is a still image ({info.container}), not a video container")
    if info.num_frames < 1:
        raise InvalidVideoError("the video holds no frames")
    if info.duration_s > settings.video_max_duration_s:
        raise VideoTooLargeError(
            f"the video lasts {info.duration_s:.1f} s; the limit is {settings.video_max_duration_s:g} s"
        )
    if info.num_frames > settings.video_max_frames:
        raise VideoTooLargeError(f"the video has {info.num_frames} frames; the limit is {settings.video_max_frames}")
    pixels = info.width * info.height
    if pixels > min(settings.max_image_pixels, settings.max_request_pixels):
        raise VideoTooLargeError(
            f"frames are {info.width}x{info.height} = {pixels} pixels; the limit is {settings.max_image_pixels}"
        )
    return info


# ---- decoding in a thread ---------------------------------------------------------------------------------


class FrameReader:
    """Decodes in a thread of its own into a bounded queue: the event loop never decodes, and a slow
    client or a busy batcher holds at most ``depth`` decoded frames in memory."""

    def __init__(self, path: Path, options: VideoOptions, depth: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[VideoFrame | Exception | None] = asyncio.Queue(depth)
        self._stop = threading.Event()
        args = (path, options.stride, options.max_frames, options.max_duration_s)
        self._thread = threading.Thread(target=self._run, args=args, name="pose-video-decode", daemon=True)
        self._thread.start()

    def _run(self, path: Path, stride: int, max_frames: int | None, max_duration_s: float | None) -> None:
        try:
            for frame in iter_frames(path, stride, max_frames, max_duration_s):
                if not self._put(frame):
                    return
            self._put(None)
        except Exception as err:  # handed to the stream, which ends with an error line
            self._put(err)

    def _put(self, item: VideoFrame | Exception | None) -> bool:
        future = asyncio.run_coroutine_threadsafe(self.queue.put(item), self.loop)
        while not self._stop.is_set():
            try:
                future.result(timeout=0.1)
                return True
            except concurrent.futures.TimeoutError:
                continue
        future.cancel()
        return False

    async def batches(self, size: int) -> AsyncIterator[list[VideoFrame]]:
        """Frames in groups of up to ``size``; a group is cut short rather than wait for a slow decoder."""
        ended = False
        while not ended:
            batch: list[VideoFrame] = []
            item = await self.queue.get()
            while True:
                if item is None:
                    ended = True
                    break
                if isinstance(item, Exception):
                    if batch:
                        yield batch
                    raise item
                batch.append(item)
                if len(batch) >= size or self.queue.empty():
                    break
                item = self.queue.get_nowait()
            if batch:
                yield batch

    def stop(self) -> None:
        self._stop.set()


# ---- lines ---------------------------------------------------------------------------------------------


def _frame_line(
    frame: VideoFrame, tracked: TrackedPoses, track: bool, options: ResolvedOptions, names: list[str]
) -> tuple[VideoFrameResult, list[tuple[Person, int | None]]]:
    """The frame's line (best first, at most ``max_people``) and its people with ids for the overlay."""
    ids = tracked.track_ids if track else None
    record = frame_record(
        frame.index, frame.time_s, tracked.keypoints, tracked.scores, tracked.boxes, ids, names, options.max_people
    )
    line = VideoFrameResult.model_validate(record)
    drawn = [(Person([(k.x, k.y, k.score) for k in p.keypoints], p.score, p.bbox), p.track_id) for p in line.people]
    return line, drawn


def _untracked(poses: PoseResult) -> TrackedPoses:
    return TrackedPoses(poses.keypoints, poses.scores, poses.boxes, torch.zeros(len(poses.scores), dtype=torch.int64))


def _draw(writer: VideoWriter, image: np.ndarray, people: list[tuple[Person, int | None]], config: ModelConfig) -> None:
    ids = [i or 0 for _, i in people]
    writer.write(draw_people(image, [p for p, _ in people], config.keypoints.skeleton, colors=track_colors(ids)))


async def _run_batch(
    batcher: DynamicBatcher, images: list[np.ndarray], options: ResolvedOptions, timeout_s: float
) -> list[PoseResult]:
    """The batcher's answer within ``timeout_s``; refusals for load are waited out (the stream has begun:
    a 429 can no longer be sent), the time-out is the stream's last line."""
    deadline = time.perf_counter() + timeout_s
    while True:
        try:
            results, _ = await batcher.submit(images, options.run, deadline)
            return results
        except (QueueFullError, OverloadedError) as err:
            wait_s = float((err.headers or {}).get("Retry-After", 1))
            if time.perf_counter() + wait_s > deadline:
                raise TimeoutError from None
            await asyncio.sleep(min(wait_s, 0.25))


@dataclass
class VideoJob:
    """One accepted video on its way to NDJSON lines."""

    path: Path
    info: VideoInfo
    options: VideoOptions
    resolved: ResolvedOptions
    config: ModelConfig
    settings: Settings
    start: float
    frames: int = 0
    track_ids: set[int] = field(default_factory=set)


async def stream_lines(
    job: VideoJob,
    batcher: DynamicBatcher,
    reserve: Callable[[int], contextlib.AbstractAsyncContextManager[None]],
    store: OverlayStore,
    on_frames: Callable[[int], None],
    on_unsent: Callable[[int], None],
    done: Callable[[], None],
) -> AsyncIterator[bytes]:
    """The response body; whatever ends it (the end, an error, the client leaving) frees the slot and file."""
    s, opts = job.settings, job.options
    tracker = PoseTracker(TrackerConfig(match=opts.match, smoothing=opts.smoothing), job.config.keypoints.sigmas)
    frame_pixels = job.info.width * job.info.height
    group = max(1, min(s.video_batch_frames, s.max_request_pixels // frame_pixels))
    reader = FrameReader(job.path, opts, depth=2 * group)
    overlay_id, overlay_path = store.reserve() if opts.overlay else (None, None)
    writer: VideoWriter | None = None
    codec = ""
    unsent = 0  # frames computed whose lines are not sent yet
    try:
        if overlay_path is not None:
            fps = job.info.fps / opts.stride
            writer = await asyncio.to_thread(VideoWriter, overlay_path, fps)
            codec = writer.codec
        async for frames in reader.batches(group):
            async with reserve(frame_pixels * len(frames)):
                poses = await _run_batch(batcher, [f.image for f in frames], job.resolved, s.request_timeout_s)
            poses = [p.above(job.resolved.score_threshold) for p in poses]
            tracked = (
                tracker.update_batch(poses, [f.time_s for f in frames])
                if opts.track
                else [_untracked(p) for p in poses]
            )
            lines = []
            for frame, people in zip(frames, tracked, strict=True):
                line, drawn = _frame_line(frame, people, opts.track, job.resolved, job.config.keypoints.names)
                job.track_ids.update(i for _, i in drawn if i is not None)
                lines.append(line.model_dump_json() + "\n")
                if writer is not None:
                    await asyncio.to_thread(_draw, writer, frame.image, drawn, job.config)
            job.frames += len(frames)
            unsent = len(frames)
            yield "".join(lines).encode()
            unsent = 0  # the server asked for the next lines: these were sent
            on_frames(len(frames))
        overlay = None
        if writer is not None and overlay_id is not None:
            await asyncio.to_thread(writer.close)
            writer = None
            store.publish(overlay_id)
            overlay = OverlayInfo(url=f"/v1/pose/video/{overlay_id}/overlay.mp4", codec=codec, expires_s=store.ttl_s)
        summary = VideoSummary(
            frames=job.frames,
            tracks=len(job.track_ids),
            width=job.info.width,
            height=job.info.height,
            fps=job.info.fps,
            duration_s=job.info.duration_s,
            rotation=job.info.rotation,
            elapsed_s=time.perf_counter() - job.start,
            overlay=overlay,
        )
        yield (VideoSummaryLine(summary=summary).model_dump_json() + "\n").encode()
    except (ServiceError, VideoReadError, TimeoutError) as err:
        # The status line went out with the first frames; the error is the stream's last line instead.
        code, message = _describe(err, job.frames)
        yield (json.dumps(error_body(code, message)) + "\n").encode()
    except Exception:  # a bug must not cut the stream without a word: the log has the details
        log.exception("video stream failed after %d frames", job.frames)
        message = "internal error; the service's log has the details under this request id"
        yield (json.dumps(error_body("internal_error", message)) + "\n").encode()
    finally:
        if unsent:  # the client stopped reading: these frames were computed for nobody
            on_unsent(unsent)
        reader.stop()
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.close()
        if overlay_id is not None and overlay_path is not None and overlay_path.exists():
            store.discard(overlay_id)
        done()


def _describe(err: Exception, frames: int) -> tuple[str, str]:
    if isinstance(err, ServiceError):
        return err.code, err.message
    if isinstance(err, VideoReadError):
        return InvalidVideoError.code, f"{err} (after {frames} frames were sent)"
    return "timeout", f"no result for the next frames within the request timeout (after {frames} frames)"


# ---- routes --------------------------------------------------------------------------------------------

_VIDEO_BODY = upload_body(VIDEO_TYPES, "file")
_NDJSON_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "One JSON object per line: a VideoFrameResult per frame, then a VideoSummaryLine; an "
        "error after the first line arrives as a last line {'error': {...}}",
        "content": {
            NDJSON: {"schema": {"oneOf": [inline_json_schema(VideoFrameResult), inline_json_schema(VideoSummaryLine)]}}
        },
    },
    **ERRORS,
}

video_router = APIRouter(prefix="/v1", tags=["video"])


@video_router.post(
    "/pose/video", response_class=StreamingResponse, responses=_NDJSON_RESPONSE, openapi_extra=_VIDEO_BODY
)
async def estimate_video_poses(
    request: Request,
    _: ApiKey,
    settings: SettingsDep,
    config: ModelDep,
    batcher: BatcherDep,
    intake: IntakeDep,
    metrics: MetricsDep,
    videos: VideoDep,
    query: Annotated[VideoOptions, Query()],
) -> StreamingResponse:
    """Every person's keypoints in every frame of a video (MP4, WebM, MOV), with track ids, as NDJSON.

    Send the video as the raw body or as multipart/form-data field `file`. Lines stream as frames are
    done: `{"frame", "time_s", "people": [{..., "track_id"}]}` per frame, then `{"summary": {...}}`.
    """
    start = time.perf_counter()
    resolved = resolve_options(query, settings, config)
    videos.acquire()
    path = videos.root / "uploads" / f"{uuid.uuid4().hex}.video"
    try:
        await save_upload(request, settings.video_max_bytes, path)
        info = await intake.run(check_video, path, settings)
    except BaseException:
        path.unlink(missing_ok=True)
        videos.release()
        raise
    job = VideoJob(path, info, query, resolved, config, settings, start)
    metrics.videos.inc()

    def reserve(pixels: int) -> contextlib.AbstractAsyncContextManager[None]:
        return intake.reserve(pixels, wait_s=settings.request_timeout_s)  # later frames wait for the budget

    released = False

    def finish() -> None:  # once, whether the body ran to its end, failed, or was never started
        nonlocal released
        if not released:
            released = True
            path.unlink(missing_ok=True)
            videos.release()

    def sent(frames: int) -> None:
        metrics.video_frames.inc(frames)
        metrics.delivered_images.labels(deadline="met").inc(frames)  # a group past its deadline ends the stream

    def unsent(frames: int) -> None:
        metrics.wasted_images.labels(reason="client_gone").inc(frames)

    body = stream_lines(job, batcher, reserve, videos.overlays, sent, unsent, finish)
    weakref.finalize(body, finish)  # a client gone before the first byte: the body is dropped unstarted
    return StreamingResponse(body, media_type=NDJSON)


@video_router.get(
    "/pose/video/{video_id}/overlay.mp4",
    response_class=FileResponse,
    responses={
        200: {"content": {"video/mp4": {}}, "description": "H.264 MP4 with skeletons"},
        404: {"description": "Unknown or expired overlay"},
        **ERRORS,
    },
)
async def overlay_video(video_id: str, _: ApiKey, videos: VideoDep) -> FileResponse:
    """The overlay video a ``POST /v1/pose/video`` with ``overlay=true`` rendered (kept for a while)."""
    path = videos.overlays.path(video_id)
    if not path.exists():
        raise NotFoundError(f"overlay video {video_id} is gone")
    return FileResponse(path, media_type="video/mp4", filename="overlay.mp4")
