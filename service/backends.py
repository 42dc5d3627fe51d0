"""Network backends behind one interface: a callable from a normalized batch to :class:`PoseOutput`.

The rest of the path (preprocessing, flip test, grouping, scoring) is :class:`pose.pipeline.BatchPipeline`
and is the same for every backend.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from pose.checkpoint import load_weights
from pose.config import ModelConfig
from pose.models.hrnet import PoseOutput, create_model
from pose.ops.adaptive_conv import use_implementation
from service.settings import Settings


class Backend(Protocol):
    """What the pipeline needs from a backend."""

    name: str
    device: torch.device

    def __call__(self, x: Tensor) -> PoseOutput: ...


class TorchBackend:
    """Eager PyTorch on CPU or CUDA; float16 on CUDA when asked (outputs returned in float32)."""

    name = "torch"

    def __init__(self, config: ModelConfig, settings: Settings) -> None:
        self.device = torch.device(settings.device)
        self.half = settings.half
        model = create_model(config)
        weights = settings.weights or config.resolve(config.weights)
        if weights is None:
            raise FileNotFoundError(f"model {config.name} names no weights; set POSE_WEIGHTS")
        load_weights(model, weights)
        self.model = model.to(self.device).eval()
        if self.half:
            self.model = self.model.half()
        self.adaptive_conv = _pick_adaptive_conv(settings.adaptive_conv, self.device)

    def __call__(self, x: Tensor) -> PoseOutput:
        with use_implementation(self.adaptive_conv):
            out = self.model(x.half() if self.half else x)
        if not self.half:
            return out
        heat_2x = out.heatmaps_2x.float() if out.heatmaps_2x is not None else None
        return PoseOutput(out.heatmaps.float(), out.offsets.float(), heat_2x)


def _pick_adaptive_conv(choice: str, device: torch.device) -> str:
    """The fused Triton kernel on CUDA when available, else the pure-torch op."""
    if choice == "torch" or (choice == "auto" and device.type != "cuda"):
        return "torch"
    try:
        import export.triton_kernel  # noqa: F401 - registers the "triton" implementation
    except ImportError:
        if choice == "triton":
            raise
        return "torch"
    return "triton"


def create_backend(config: ModelConfig, settings: Settings) -> Backend:
    """The configured runtime; ONNX and TensorRT come from export's runtime pieces."""
    k = config.keypoints.num_keypoints
    if settings.backend == "torch":
        return TorchBackend(config, settings)
    if settings.backend == "onnx":
        from export.onnx_runtime import OnnxRuntimeNetwork

        path = settings.onnx_path or next(
            (config.resolve(a.path) for a in config.onnx if a.variant == "portable"), None
        )
        if path is None:
            raise FileNotFoundError(
                f"model {config.name} has no portable ONNX; run pose-export onnx or set POSE_ONNX_PATH"
            )
        return OnnxRuntimeNetwork(path, k, settings.device, config.input.stride)
    from export.tensorrt_runtime import TensorRTNetwork

    engine = settings.engine_path
    if engine is None and settings.engine_cache is not None:
        from export.engine_cache import ENGINE_FILE, cache_entry

        engine = cache_entry(config, settings.engine_cache, settings.weights) / ENGINE_FILE
    engine = engine or config.resolve(f"{config.version}/model.plan")
    if engine is None:
        raise FileNotFoundError(
            "no TensorRT engine; build one with pose-export tensorrt, or set POSE_ENGINE_PATH or POSE_ENGINE_CACHE"
        )
    return TensorRTNetwork(engine, k, settings.device)
