"""Service configuration from ``POSE_*`` environment variables (and an optional ``.env`` file)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pose.config import DEFAULT_MODEL, check_scales
from pose.runtimes.options import DEFAULT_ONNX_CACHE, RuntimeOptions


class Settings(BaseSettings):
    """Every knob of the service; Helm values and Docker env use the same names with ``POSE_``."""

    model_config = SettingsConfigDict(env_prefix="POSE_", env_file=".env", env_ignore_empty=True, extra="ignore")

    model: Path = Field(DEFAULT_MODEL, description="model_repo/<name> folder or config.yaml")
    weights: Path | None = Field(None, description="checkpoint overriding the config's weights")
    backend: Literal["auto", "torch", "onnx", "tensorrt"] = Field(
        "auto",
        description="network runtime (auto: torch on CUDA; on a CPU, ONNX Runtime on the portable graph once it "
        "matches torch at start-up, else torch)",
    )
    onnx_path: Path | None = Field(
        None, description="ONNX graph for the onnx backend (default: the config's portable one)"
    )
    onnx_cache: Path = Field(
        DEFAULT_ONNX_CACHE,
        description="where the auto backend keeps the portable graphs it exports (one per model and weights)",
    )
    precision: Literal["float32", "int8"] = Field(
        "float32",
        description="int8: the backbone quantized on a CPU (ONNX Runtime), heads in float32; used once its poses "
        "on drawn scenes match float32's at start-up, else float32 with the reason in /v1/models",
    )
    calibration_images: Path | None = Field(
        None, description="with precision int8: a folder of your images to calibrate on, besides drawn scenes"
    )
    engine_path: Path | None = Field(None, description="TensorRT engine for the tensorrt backend")
    engine_cache: Path | None = Field(
        None, description="engine cache folder filled by pose-export prepare-engine (used when engine_path is unset)"
    )
    device: str = "cpu"
    half: bool = Field(False, description="float16 network on CUDA")
    float32_heads: bool = Field(
        False,
        description="with half: the heatmap and regression heads in float32 around the float16 backbone "
        "(poses closer to float32's, at the regression head's float32 cost)",
    )
    adaptive_conv: Literal["auto", "torch", "triton"] = Field(
        "auto",
        description="adaptive-conv implementation of the torch backend (auto: the Triton kernel on CUDA if it "
        "passes its start-up check, else the torch op; triton: refuse to start without the kernel)",
    )
    cuda_graphs: bool | None = Field(
        None, description="replay the network as CUDA graphs, one per batch bucket and input shape (None: on CUDA)"
    )
    cuda_graph_memory_mb: int = Field(
        32768, ge=0, description="device memory the CUDA graphs may hold; least recently used ones are dropped"
    )
    max_batch_size: int = Field(8, ge=1, le=256)
    max_queue_delay_ms: float = Field(5.0, ge=0, description="how long the first request of a batch waits for more")
    queue_limit: int = Field(64, ge=1, description="requests waiting beyond this get 429")
    request_timeout_s: float = Field(30.0, gt=0, description="end-to-end limit per request; then 504")
    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(40_000_000, ge=1, description="decoded pixel cap, checked from the header")
    min_image_side: int = Field(1, ge=1, description="smaller images get 400")
    max_aspect_ratio: float = Field(8.0, ge=1, description="long side / short side beyond which images get 400")
    max_images_per_request: int = Field(16, ge=1)
    max_request_pixels: int = Field(
        40_000_000, ge=1, description="decoded pixels one request may hold, summed over its images; more get 413"
    )
    max_inflight_pixels: int = Field(
        120_000_000, ge=1, description="decoded pixels held by all requests in flight; a request beyond gets 429"
    )
    decode_workers: int = Field(2, ge=1, description="threads that parse bodies and decode images")
    threads: int | None = Field(None, ge=1, description="torch and OpenCV threads (None: the container's CPU quota)")
    flip: bool | None = Field(None, description="flip-test default (None: the model's)")
    scales: list[float] | None = Field(None, description="test scales default (None: the model's)")
    score_threshold: float | None = Field(
        None, ge=0, description="poses scoring below this are dropped (None: the model's test.score_threshold)"
    )
    stream_queue_frames: int = Field(
        1,
        ge=1,
        le=64,
        description="frames a stream may hold waiting for the model, besides the one it computes; beyond it the "
        "oldest is dropped (1: always the newest frame next, the lowest latency)",
    )
    stream_max_frame_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="largest JPEG frame a stream accepts (larger ones get an error message)"
    )
    stream_idle_timeout_s: float = Field(
        60.0, gt=0, description="a stream that sends nothing for this long is closed (code 4408)"
    )
    max_streams: int = Field(32, ge=1, description="open WebSocket streams beyond this are refused (close code 4429)")
    api_key: str | None = Field(None, description="when set, requests need X-API-Key or Bearer (streams: or ?token=)")
    api_key_file: Path | None = Field(None, description="file holding the API key (a mounted secret)")
    video_max_bytes: int = Field(256 * 1024 * 1024, ge=1024, description="largest video upload; more gets 413")
    video_max_duration_s: float = Field(600.0, gt=0, description="longer videos get 413 (read from the header)")
    video_max_frames: int = Field(18_000, ge=1, description="videos with more frames get 413 (before the stride)")
    video_batch_frames: int = Field(8, ge=1, description="frames of one video submitted to the batcher together")
    video_max_concurrent: int = Field(2, ge=1, description="videos decoded at once; more get 429")
    video_overlay_ttl_s: float = Field(900.0, gt=0, description="rendered overlay videos are deleted after this")
    video_overlay_max_files: int = Field(16, ge=1, description="overlay videos kept at once; the oldest go first")
    warmup: bool = True
    drain_timeout_s: float = Field(30.0, ge=0, description="shutdown waits this long for queued requests")
    log_format: Literal["text", "json"] = Field("text", description="json: one JSON object per log line")
    host: str = "0.0.0.0"
    port: int = 8000

    def runtime_options(self) -> RuntimeOptions:
        """The runtime options these settings ask for: the same ones the API, CLI and bulk jobs take."""
        return RuntimeOptions(
            backend=self.backend,
            precision=self.precision,
            device=self.device,
            weights=self.weights,
            half=self.half,
            float32_heads=self.float32_heads,
            adaptive_conv=self.adaptive_conv,
            cuda_graphs=self.cuda_graphs,
            cuda_graph_memory_mb=self.cuda_graph_memory_mb,
            onnx_path=self.onnx_path,
            onnx_cache=self.onnx_cache,
            engine_path=self.engine_path,
            engine_cache=self.engine_cache,
            calibration_images=self.calibration_images,
        )

    @model_validator(mode="after")
    def _check(self) -> Settings:
        self.runtime_options()  # the runtime's own checks (precision int8 on a CPU through ONNX Runtime, ...)
        if self.half and not self.device.startswith("cuda"):
            raise ValueError("half precision needs a CUDA device")
        if self.float32_heads and not self.half:
            raise ValueError("float32_heads applies to a float16 network: set half too")
        if self.float32_heads and self.backend in ("onnx", "tensorrt"):
            raise ValueError("float32_heads applies to the torch backend (auto on CUDA), not to onnx or tensorrt")
        if self.scales is not None:
            check_scales(self.scales)
        if self.max_request_pixels > self.max_inflight_pixels:
            raise ValueError("max_request_pixels must not exceed max_inflight_pixels: such a request never fits")
        if self.api_key_file is not None:
            if self.api_key is not None:
                raise ValueError("set api_key or api_key_file, not both")
            try:
                key = self.api_key_file.read_text().strip()
            except OSError as err:
                raise ValueError(f"cannot read api_key_file {self.api_key_file}: {err.strerror}") from None
            if not key:
                raise ValueError(f"api_key_file {self.api_key_file} is empty")
            self.api_key = key
        return self
