"""``WS /v1/stream``: JPEG frames in, tracked poses out, with latency bounded under overload.

One connection is one stream with its own tracker, so track ids mean one person for the connection's life.

- Connect to ``/v1/stream?flip=&scales=&score_threshold=&max_people=&match=&smoothing=``. With an API key configured,
  send it as ``X-API-Key`` or ``Authorization: Bearer``, or as ``?token=`` from a browser, which cannot
  set headers on a WebSocket.
- The server first sends ``ready`` (model, keypoint names, skeleton, resolved options). The client then
  sends each frame as a binary message holding a JPEG, optionally preceded by a text message
  ``{"time": t}`` whose ``t`` comes back with that frame's answer. Every frame not dropped gets one
  ``poses`` or ``error`` message, in order.
- A problem with the whole connection closes it with code 4000 + the HTTP status the same problem gets
  over REST, the message as reason: 4401 key, 4422 options, 4429 too many streams, 4400 a text message
  that is not ``{"time": t}``, 4408 nothing sent for ``POSE_STREAM_IDLE_TIMEOUT_S``, 4503 not ready or
  shutting down. A bad frame only gets an ``error`` message.

Two tasks per connection. The reader takes messages off the socket as they arrive into a
:class:`~service.frames.FrameQueue` of ``POSE_STREAM_QUEUE_FRAMES``; the answerer takes frames one at a time
through the same intake (pixel budgets, decode pool) and batcher as ``POST /v1/pose``, so streams and
images share batches. A frame pushed out of the full queue, or refused by a saturated batcher, is dropped
and counted in the next message's ``dropped``: a camera faster than the model sees fewer answers, not
later ones.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import numpy as np
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from pose.pipeline import PoseResult
from pose.results import best_first
from pose.tracking import PoseTracker, TrackerConfig
from service.batch_cost import work_units
from service.deps import ServiceState, check_api_key
from service.errors import (
    BusyError,
    IdleStreamError,
    InvalidOptionError,
    InvalidRequestError,
    NotReadyError,
    OverloadedError,
    PayloadTooLargeError,
    QueueFullError,
    ServiceError,
    ShuttingDownError,
    TooManyStreamsError,
    validation_details,
)
from service.frames import Frame, FrameQueue
from service.imaging import ImageHeader
from service.options import ResolvedOptions, StreamOptions, resolve_options
from service.stream_schemas import StreamControl, StreamError, StreamPoses, StreamReady, TrackedPerson

__all__ = ["CLOSE_CODE_BASE", "close_code", "stream_router"]

log = logging.getLogger("pose.stream")

CLOSE_CODE_BASE = 4000  # + the HTTP status: the range RFC 6455 leaves to applications
MAX_REASON_BYTES = 123  # a close frame's reason must fit in 125 bytes with the code
_OVERLOAD = (BusyError, QueueFullError, OverloadedError)  # the frame is dropped, not failed
# What sending to or closing a socket whose client left raises (Starlette, or uvicorn's ClientDisconnected).
_CLIENT_GONE = (WebSocketDisconnect, RuntimeError, OSError)

stream_router = APIRouter(prefix="/v1", tags=["stream"])


def close_code(err: ServiceError) -> int:
    return CLOSE_CODE_BASE + err.status


def _reason(message: str) -> str:
    return message.encode()[:MAX_REASON_BYTES].decode(errors="ignore")


def _given_key(websocket: WebSocket) -> str | None:
    if key := websocket.headers.get("x-api-key"):
        return key
    scheme, _, credentials = websocket.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return websocket.query_params.get("token")


def _finite(values: np.ndarray) -> np.ndarray:
    """JSON has no NaN or infinity."""
    return np.nan_to_num(values, nan=0.0, posinf=3.0e38, neginf=-3.0e38)


@dataclass
class Stream:
    """One connection's options and tracker."""

    service: ServiceState
    options: ResolvedOptions
    smoothing: bool
    tracker: PoseTracker
    opened: float

    @classmethod
    def open(cls, service: ServiceState, websocket: WebSocket) -> Stream:
        """Check the key, readiness, the stream limit and the options, in that order."""
        settings = service.settings
        check_api_key(settings, _given_key(websocket))
        service.check_ready()
        if service.config is None:
            raise NotReadyError("the model is not loaded yet")
        if service.streams >= settings.max_streams:
            raise TooManyStreamsError(f"{service.streams} streams are open; the limit is {settings.max_streams}")
        query = websocket.query_params
        params = {k: query.getlist(k) if k == "scales" else query[k] for k in query if k != "token"}
        try:
            options = StreamOptions.model_validate(params)
        except ValidationError as err:
            raise InvalidOptionError(validation_details(err.errors())) from None
        resolved = resolve_options(options, settings, service.config)
        tracker = PoseTracker(
            TrackerConfig(match=options.match, smoothing=options.smoothing), sigmas=service.config.keypoints.sigmas
        )
        return cls(service, resolved, options.smoothing, tracker, time.perf_counter())

    def ready(self) -> StreamReady:
        config, settings = self.service.config, self.service.settings
        assert config is not None
        return StreamReady(
            model=config.name,
            version=config.version,
            keypoints=config.keypoints.names,
            skeleton=config.keypoints.skeleton,
            flip=self.options.run.flip,
            scales=list(self.options.run.scales),
            score_threshold=self.options.score_threshold,
            max_people=self.options.max_people,
            smoothing=self.smoothing,
            queue_frames=settings.stream_queue_frames,
            max_frame_bytes=settings.stream_max_frame_bytes,
        )

    def track(self, poses: PoseResult, time_s: float) -> list[TrackedPerson]:
        """The frame's poses above the threshold with their track ids, best first (CPU work: run in a thread).

        Every pose above the threshold is tracked and ``max_people`` applies after, so a person ranked just
        below the cap in one frame keeps their id when they rank above it in the next.
        """
        tracked = self.tracker.update(poses.above(self.options.score_threshold), time_s)
        scores = _finite(tracked.scores.numpy())
        order = best_first(tracked.scores)[: self.options.max_people].numpy()
        return [
            TrackedPerson(track_id=i, score=s, bbox=tuple(b), keypoints=[tuple(j) for j in k])
            for i, s, b, k in zip(
                tracked.track_ids.numpy()[order].tolist(),
                scores[order].tolist(),
                _finite(tracked.boxes.numpy()[order]).tolist(),
                _finite(tracked.keypoints.numpy()[order]).tolist(),
                strict=True,
            )
        ]

    async def answer(self, frame: Frame, queue: FrameQueue) -> StreamPoses:
        """Decode, batch and track one frame; raises the frame's :class:`ServiceError`."""
        service = self.service
        if service.intake is None or service.batcher is None:
            raise NotReadyError("the model is not loaded yet")
        if frame.error is not None:
            raise frame.error
        batcher, run, config = service.batcher, self.options.run, service.config
        assert config is not None
        deadline = frame.received + service.settings.request_timeout_s

        def admit(headers: list[ImageHeader]) -> None:  # a frame that would be answered too late is dropped
            units = work_units(((h.width, h.height) for h in headers), run, config.input.size)
            batcher.check_admission(units, len(headers), deadline)

        async with service.intake.admit([frame.data], check=admit) as images:
            results, info = await batcher.submit(images, run, deadline)
            height, width = images[0].shape[:2]
        people = await asyncio.to_thread(self.track, results[0], frame.received - self.opened)
        return StreamPoses(
            seq=frame.seq,
            time=frame.client_time,
            width=width,
            height=height,
            people=people,
            dropped=queue.take_dropped(),
            latency_ms=1000 * (time.perf_counter() - frame.received),
            batch_size=info.batch_size,
        )


async def _read(websocket: WebSocket, queue: FrameQueue, stream: Stream) -> None:
    """Take every message off the socket as it arrives, so a slow model never stalls the connection."""
    settings, metrics = stream.service.settings, stream.service.metrics
    limit, idle_s = settings.stream_max_frame_bytes, settings.stream_idle_timeout_s
    seq, client_time = 0, None
    while True:
        try:
            message = await asyncio.wait_for(websocket.receive(), idle_s)
        except TimeoutError:
            queue.close(IdleStreamError(f"no message for {idle_s:g} s"))
            return
        if message["type"] == "websocket.disconnect":
            queue.close()
            return
        if (data := message.get("bytes")) is not None:
            frame = Frame(seq, data, client_time)
            if len(data) > limit:
                frame.data = b""
                frame.error = PayloadTooLargeError(f"frame {seq} is {len(data)} bytes; the limit is {limit}")
            seq, client_time = seq + 1, None
            metrics.stream_frames.labels(outcome="received").inc()
            if queue.put(frame) is not None:
                metrics.stream_frames.labels(outcome="dropped").inc()
        elif (text := message.get("text")) is not None:
            try:
                client_time = StreamControl.model_validate_json(text).time
            except ValidationError:
                queue.close(
                    InvalidRequestError('text messages must be {"time": <number>}; frames go as binary JPEG messages')
                )
                return


async def _answer(websocket: WebSocket, queue: FrameQueue, stream: Stream) -> None:
    """Answer queued frames in order until the queue closes; overload drops, a bad frame gets an error."""
    metrics = stream.service.metrics
    while (frame := await queue.get()) is not None:
        message: StreamPoses | StreamError
        try:
            message = await stream.answer(frame, queue)
        except _OVERLOAD:
            queue.count_dropped()
            metrics.stream_frames.labels(outcome="dropped").inc()
            continue
        except (NotReadyError, ShuttingDownError):
            raise
        except ServiceError as err:
            message = StreamError(
                seq=frame.seq, time=frame.client_time, code=err.code, message=err.message, dropped=queue.take_dropped()
            )
            metrics.stream_frames.labels(outcome="failed").inc()
        try:
            await websocket.send_text(message.model_dump_json())
        except _CLIENT_GONE:
            if isinstance(message, StreamPoses):
                metrics.wasted_images.labels(reason="client_gone").inc()
            raise
        if isinstance(message, StreamPoses):
            latency = time.perf_counter() - frame.received
            metrics.stream_frames.labels(outcome="answered").inc()
            metrics.stream_frame_seconds.observe(latency)
            in_time = latency <= stream.service.settings.request_timeout_s
            metrics.delivered_images.labels(deadline="met" if in_time else "missed").inc()


async def _close(websocket: WebSocket, err: ServiceError) -> None:
    try:
        await websocket.close(close_code(err), _reason(err.message))
    except _CLIENT_GONE:
        pass


@stream_router.websocket("/stream")
async def pose_stream(websocket: WebSocket) -> None:
    """Tracked poses of a live JPEG stream (protocol in this module's docstring and the README)."""
    service: ServiceState = websocket.app.state.service
    await websocket.accept()
    try:
        stream = Stream.open(service, websocket)
    except ServiceError as err:
        await _close(websocket, err)
        return
    service.streams += 1
    service.metrics.streams_open.inc()
    queue = FrameQueue(service.settings.stream_queue_frames)
    tasks: list[asyncio.Task] = []
    try:
        await websocket.send_text(stream.ready().model_dump_json())
        tasks = [
            asyncio.create_task(_read(websocket, queue, stream)),
            asyncio.create_task(_answer(websocket, queue, stream)),
        ]
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await _finish(websocket, queue, done)
    except _CLIENT_GONE:
        pass  # the client left before the ready message
    finally:
        for task in tasks:
            task.cancel()
        service.streams -= 1
        service.metrics.streams_open.dec()
        log.info(
            "stream closed after %.1f s, %d frames dropped", time.perf_counter() - stream.opened, queue.dropped_total
        )


async def _finish(websocket: WebSocket, queue: FrameQueue, done: set[asyncio.Task]) -> None:
    """Close the socket with the code of whatever ended the stream (nothing to do when the client left)."""
    errors = [t.exception() for t in done if not t.cancelled() and t.exception() is not None]
    if queue.error is not None:
        await _close(websocket, queue.error)
    elif service_errors := [e for e in errors if isinstance(e, ServiceError)]:
        await _close(websocket, service_errors[0])
    elif unexpected := [e for e in errors if not isinstance(e, _CLIENT_GONE)]:
        log.error("stream failed", exc_info=unexpected[0])
        try:
            await websocket.close(1011, "internal error; the service's log has the details")
        except _CLIENT_GONE:
            pass
