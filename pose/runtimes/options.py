"""How to run a model's network: one set of options for the API, the CLI, bulk jobs and the service."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pose.errors import RuntimeOptionsError

__all__ = ["DEFAULT_ONNX_CACHE", "BackendName", "Precision", "RuntimeOptions", "default_onnx_cache"]

BackendName = Literal["auto", "torch", "onnx", "tensorrt"]
Precision = Literal["float32", "int8"]
BACKENDS: tuple[BackendName, ...] = ("auto", "torch", "onnx", "tensorrt")
PRECISIONS: tuple[Precision, ...] = ("float32", "int8")
DEFAULT_ONNX_CACHE = Path.home() / ".cache" / "pose" / "onnx"


def default_onnx_cache() -> Path:
    """``POSE_ONNX_CACHE`` when set (the service's setting, so every front-end shares one cache), else
    ``~/.cache/pose/onnx``."""
    return Path(os.environ.get("POSE_ONNX_CACHE") or DEFAULT_ONNX_CACHE)


@dataclass(frozen=True)
class RuntimeOptions:
    """Which runtime runs the network, and how.

    ``backend="auto"`` (the default everywhere) is torch on CUDA and, on a CPU, ONNX Runtime on the
    portable graph once it has matched the torch network; ``precision="int8"`` asks for the quantized
    backbone on a CPU, used only once its poses have matched float32's (:mod:`pose.runtimes.choice`).
    """

    backend: BackendName = "auto"
    precision: Precision = "float32"  # int8: the backbone quantized (CPU, ONNX Runtime), heads in float32
    device: str = "cpu"
    weights: Path | None = None  # checkpoint overriding the config's
    half: bool = False  # float16 network on CUDA
    float32_heads: bool = False  # with half: both heads in float32 around the float16 backbone
    adaptive_conv: Literal["auto", "torch", "triton"] = "auto"
    cuda_graphs: bool | None = None  # None: on CUDA
    cuda_graph_memory_mb: int = 32768
    onnx_path: Path | None = None  # portable graph for the onnx backend (default: the config's)
    onnx_cache: Path = field(default_factory=default_onnx_cache)  # graphs exported at load, a folder per weights
    engine_path: Path | None = None
    engine_cache: Path | None = None
    calibration_images: Path | None = None  # int8: a folder of the user's images, calibrated on with drawn scenes

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise RuntimeOptionsError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.precision not in PRECISIONS:
            raise RuntimeOptionsError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.half and not self.device.startswith("cuda"):
            raise RuntimeOptionsError("half precision needs a CUDA device")
        if self.float32_heads and not self.half:
            raise RuntimeOptionsError("float32_heads applies to a float16 network: set half too")
        if self.float32_heads and self.backend in ("onnx", "tensorrt"):
            raise RuntimeOptionsError(
                "float32_heads applies to the torch backend (auto on CUDA), not to onnx or tensorrt"
            )
        if self.precision == "int8":
            if self.device != "cpu":
                raise RuntimeOptionsError("precision int8 runs on a CPU (ONNX Runtime); use half on CUDA")
            if self.backend not in ("auto", "onnx"):
                raise RuntimeOptionsError(
                    f"precision int8 runs in ONNX Runtime: use backend auto or onnx, not {self.backend}"
                )
            if self.onnx_path is not None:
                raise RuntimeOptionsError("precision int8 quantizes the model's own graph; onnx_path does not apply")
        if self.calibration_images is not None and not Path(self.calibration_images).is_dir():
            raise RuntimeOptionsError(f"calibration_images {self.calibration_images} is not a folder")
