"""Messages of the ``/v1/stream`` WebSocket (JSON text frames; its options are in :mod:`service.options`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["StreamControl", "StreamError", "StreamPoses", "StreamReady", "TrackedPerson"]


class StreamControl(BaseModel):
    """A text message from the client: the timestamp to echo with the next binary (JPEG) frame."""

    model_config = ConfigDict(extra="forbid")

    time: float = Field(description="any number (e.g. the client's clock in ms); echoed back unchanged")


class StreamReady(BaseModel):
    """The first message: what the stream runs and how to draw it."""

    type: Literal["ready"] = "ready"
    model: str
    version: int
    keypoints: list[str]
    skeleton: list[tuple[int, int]]
    flip: bool
    scales: list[float]
    score_threshold: float
    max_people: int
    smoothing: bool
    queue_frames: int = Field(description="frames held waiting for the model; more push out the oldest")
    max_frame_bytes: int


class TrackedPerson(BaseModel):
    track_id: int = Field(description="stable across frames of this stream while the person stays in view")
    score: float
    bbox: tuple[float, float, float, float] = Field(description="x, y, width, height")
    keypoints: list[tuple[float, float, float]] = Field(description="x, y, score per keypoint, in frame pixels")


class StreamPoses(BaseModel):
    """The answer to one frame."""

    type: Literal["poses"] = "poses"
    seq: int = Field(description="the frame's number on this stream: binary messages counted from 0")
    time: float | None = Field(None, description="the client's timestamp for this frame, echoed")
    width: int
    height: int
    people: list[TrackedPerson] = Field(description="best first")
    dropped: int = Field(description="frames dropped (overload) since the previous message")
    latency_ms: float = Field(description="frame received to this message sent, on the server")
    batch_size: int = Field(description="images in the batch this frame rode in")


class StreamError(BaseModel):
    """A frame that could not be answered (bad or too large); the stream goes on."""

    type: Literal["error"] = "error"
    seq: int
    time: float | None = None
    code: str
    message: str
    dropped: int
