"""Per-request options: declared once (query string and JSON body alike), resolved once.

A request leaves an option unset to get the service's default (``POSE_*`` settings), and the service
leaves it unset to get the model's (``model_repo/<name>/config.yaml``). :func:`resolve_options` is the
only place that walks that chain, so the batcher, the response builder and ``/v1/models`` agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pose.config import ModelConfig, check_scales
from service.errors import InvalidOptionError
from service.settings import Settings

__all__ = [
    "MAX_SCALE",
    "DecodeOptions",
    "PoseOptions",
    "ResolvedOptions",
    "RunOptions",
    "StreamOptions",
    "VideoOptions",
    "resolve_options",
]

MAX_SCALE = 2.0  # a scale of s costs about s^2 times the network time of scale 1
Scale = Annotated[float, Field(gt=0, le=MAX_SCALE)]


class DecodeOptions(BaseModel):
    """What people are reported, shared by images and videos; unset ones take the service's, then the
    model's default."""

    model_config = ConfigDict(extra="forbid")

    score_threshold: float | None = Field(
        None, ge=0, description="drop poses scoring below this (default: the model's test.score_threshold)"
    )
    max_people: int | None = Field(
        None, ge=1, description="at most this many poses per image, best first (at most the model's decode.max_people)"
    )
    flip: bool | None = Field(None, description="flip test (default: the model's)")
    scales: list[Scale] | None = Field(
        None,
        min_length=1,
        max_length=4,
        description="test scales, 1.0 among them: poses are grouped at scale 1 (default: the model's)",
        json_schema_extra={"contains": {"const": 1.0}},  # the rule, in the schema clients generate requests from
    )

    @field_validator("scales")
    @classmethod
    def _groupable(cls, v: list[float] | None) -> list[float] | None:
        return None if v is None else check_scales(v)


class PoseOptions(DecodeOptions):
    """Options of ``POST /v1/pose``."""

    overlay: bool = Field(False, description="return a skeleton overlay JPEG (base64)")
    format: Literal["people", "coco"] = Field("people", description="'coco' adds COCO results entries")


class VideoOptions(DecodeOptions):
    """Options of ``POST /v1/pose/video``."""

    stride: int = Field(1, ge=1, le=1000, description="run every stride-th frame")
    max_frames: int | None = Field(None, ge=1, description="stop after this many frames were run")
    max_duration_s: float | None = Field(None, gt=0, description="stop at this many seconds into the video")
    track: bool = Field(True, description="give each person a track_id that persists across frames")
    match: Literal["oks", "iou"] = Field("oks", description="how tracks are matched: keypoint OKS or box IoU")
    smoothing: bool = Field(False, description="One-Euro filter on tracked keypoints (off: the raw estimates)")
    overlay: bool = Field(False, description="render an H.264 MP4 with skeletons; the summary line links it")

    @model_validator(mode="after")
    def _smoothing_needs_tracks(self) -> VideoOptions:
        if self.smoothing and not self.track:
            raise ValueError("smoothing follows tracks: it needs track=true")
        return self


class StreamOptions(DecodeOptions):
    """Query parameters of ``WS /v1/stream``; they hold for the connection (reconnect to change them)."""

    match: Literal["oks", "iou"] = Field("oks", description="how tracks are matched: keypoint OKS or box IoU")
    smoothing: bool = Field(False, description="One-Euro filter on tracked keypoints (off: the raw estimates)")


@dataclass(frozen=True)
class RunOptions:
    """What changes the network pass; requests with equal run options share a batch."""

    flip: bool
    scales: tuple[float, ...]


@dataclass(frozen=True)
class ResolvedOptions:
    """Every option with its default applied."""

    run: RunOptions
    score_threshold: float
    max_people: int
    overlay: bool
    coco: bool


def resolve_options(options: DecodeOptions, settings: Settings, config: ModelConfig) -> ResolvedOptions:
    """Apply the defaults: the request's value, else the service's setting, else the model's config."""
    limit = config.decode.max_people
    if options.max_people is not None and options.max_people > limit:
        raise InvalidOptionError(
            f"max_people: at most {limit} (the model's decode.max_people), got {options.max_people}"
        )
    flip = next(v for v in (options.flip, settings.flip, config.test.flip) if v is not None)
    scales = options.scales or settings.scales or config.test.scales
    threshold = next(
        v for v in (options.score_threshold, settings.score_threshold, config.test.score_threshold) if v is not None
    )
    return ResolvedOptions(
        run=RunOptions(flip, tuple(sorted(scales, reverse=True))),
        score_threshold=threshold,
        max_people=options.max_people or limit,
        overlay=options.overlay if isinstance(options, PoseOptions) else False,
        coco=isinstance(options, PoseOptions) and options.format == "coco",
    )
