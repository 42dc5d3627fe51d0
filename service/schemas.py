"""Request and response models of the HTTP API (they are the OpenAPI schema)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.options import PoseOptions


class Keypoint(BaseModel):
    name: str
    x: float = Field(description="image pixels, from the left")
    y: float = Field(description="image pixels, from the top")
    score: float = Field(
        description="joint confidence: the person's center-heatmap peak times the joint's heatmap value there; "
        "a ranking value, not a probability or a visibility flag. Heatmaps are trained towards 1 at a joint, "
        "so confident joints score near 1 and can exceed it slightly (e.g. 1.08); the authors' models do the same"
    )


class Person(BaseModel):
    keypoints: list[Keypoint]
    score: float = Field(
        description="pose score: predicted OKS x mean joint score; people are listed by it, best first"
    )
    bbox: tuple[float, float, float, float] = Field(description="x, y, width, height around the keypoints")


class CocoResult(BaseModel):
    image_id: int
    category_id: int = 1
    keypoints: list[float] = Field(description="[x, y, score] * K, flat")
    score: float


class ImageResult(BaseModel):
    width: int
    height: int
    people: list[Person] = Field(description="best first")
    coco: list[CocoResult] | None = Field(None, description="present with format=coco")
    overlay_jpeg_base64: str | None = Field(None, description="skeleton overlay, present with overlay=true")


class Timings(BaseModel):
    queue_ms: float
    inference_ms: float = Field(description="preprocessing and network forward of the batch")
    postprocess_ms: float = Field(description="grouping and scoring of the batch")
    total_ms: float
    batch_size: int = Field(description="images in the batch this request rode in")


class PoseResponse(BaseModel):
    model: str
    version: int
    results: list[ImageResult] = Field(description="one per input image, in order")
    timings: Timings


class JsonImage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str = Field(
        description="base64-encoded JPEG, PNG, WebP or BMP bytes",
        json_schema_extra={"contentEncoding": "base64", "contentMediaType": "image/*"},
    )


class PoseRequest(PoseOptions):
    """JSON variant: one or several base64 images plus the options (which override query parameters)."""

    images: list[JsonImage] = Field(min_length=1)


def upload_body(media_types: Iterable[str], field: str, json_body: type[BaseModel] | None = None) -> dict[str, Any]:
    """The OpenAPI request body of a route that reads its body itself: raw bytes of ``media_types``, a
    multipart form with the file in ``field``, and optionally a JSON body of ``json_body``."""
    binary = {"schema": {"type": "string", "format": "binary"}}
    content: dict[str, Any] = {
        **{t: binary for t in media_types},
        "multipart/form-data": {
            "schema": {"type": "object", "properties": {field: binary["schema"]}, "required": [field]}
        },
    }
    if json_body is not None:
        content["application/json"] = {"schema": inline_json_schema(json_body)}
    return {"requestBody": {"required": True, "content": content}}


def inline_json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with nested models written in place: a body that the route parses itself is
    declared through ``openapi_extra``, where references to ``$defs`` would point nowhere."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def expand(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return expand(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: expand(v) for k, v in node.items()}
        if isinstance(node, list):
            return [expand(v) for v in node]
        return node

    return expand(schema)


class RuntimeInfo(BaseModel):
    """What the backend actually runs, which can differ from the settings when a fast path failed."""

    backend: str = Field(description="the runtime in use: torch, onnx or tensorrt")
    backend_fallback: str | None = Field(
        None, description="why the automatic choice kept torch on a CPU instead of ONNX Runtime"
    )
    precision: str = Field(
        description="network precision: float32, float16 or bfloat16; 'float16 (float32 heads)' with "
        "POSE_FLOAT32_HEADS; 'int8 backbone (float32 heads)' with POSE_PRECISION=int8 once its start-up check passed"
    )
    precision_fallback: str | None = Field(
        None, description="why POSE_PRECISION=int8 was asked and float32 runs (its start-up check failed)"
    )
    adaptive_conv: str | None = Field(None, description="adaptive-conv implementation of the torch backend")
    adaptive_conv_fallback: str | None = Field(
        None, description="why the fused kernel was wanted but is not in use (its start-up check failed)"
    )
    cuda_graphs: bool = Field(False, description="the network is replayed as CUDA graphs")
    cuda_graphs_recorded: int = Field(0, description="graphs held now, one per batch bucket and input shape")
    cuda_graph_memory_bytes: int = 0
    cuda_graph_memory_budget_bytes: int = 0


class ModelInfo(BaseModel):
    name: str
    version: int
    description: str
    dataset: str
    keypoints: list[str]
    skeleton: list[tuple[int, int]]
    input_size: int
    flip: bool
    scales: list[float]
    score_threshold: float
    max_people: int
    backend: str
    device: str
    max_batch_size: int
    runtime: RuntimeInfo


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


class Health(BaseModel):
    status: Literal["live", "ready", "not_ready"]
    reason: str | None = Field(None, description="while not ready: what start-up is doing, or why it failed")


class TrackedPerson(Person):
    track_id: int | None = Field(description="the same id in every frame where this person is seen; null untracked")


class VideoFrameResult(BaseModel):
    """One NDJSON line of ``POST /v1/pose/video``: the people of one decoded frame."""

    frame: int = Field(description="frame number in the video, counting every frame (also ones the stride skips)")
    time_s: float = Field(description="presentation time from the start of the video")
    people: list[TrackedPerson] = Field(description="best first")


class OverlayInfo(BaseModel):
    url: str = Field(description="GET it for the H.264 MP4 with skeletons drawn, coloured by track")
    codec: str = Field(description="the encoder used: libx264 where FFmpeg has it, else mpeg4")
    expires_s: float = Field(description="seconds it stays available")


class VideoSummary(BaseModel):
    frames: int = Field(description="frames run (after the stride and limits)")
    tracks: int = Field(description="distinct track ids reported (0 with track=false)")
    width: int = Field(description="frame width as displayed (after the container's rotation)")
    height: int
    fps: float
    duration_s: float = Field(description="the whole video's duration from its header")
    rotation: int = Field(description="display rotation applied to the stored frames, degrees counter-clockwise")
    elapsed_s: float = Field(description="time from the request's arrival to this line")
    overlay: OverlayInfo | None = Field(None, description="present with overlay=true")


class VideoSummaryLine(BaseModel):
    """The last NDJSON line of a video that was processed to its end (or to its limits)."""

    summary: VideoSummary
