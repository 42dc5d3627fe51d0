"""TensorRT engines as a backend (built by ``pose-export tensorrt`` for the GPU that serves)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from pose.models.hrnet import PoseOutput
from pose.runtimes.report import RuntimeReport

__all__ = ["TensorRTBackend"]


class TensorRTBackend:
    """``(B, 3, H, W) -> PoseOutput`` through a deserialized engine on the current CUDA stream."""

    name = "tensorrt"

    def __init__(self, engine: str | Path, num_keypoints: int, device: str | torch.device = "cuda") -> None:
        engine = Path(engine)
        if not engine.is_file():
            raise FileNotFoundError(f"no TensorRT engine at {engine}; build it with pose-export tensorrt")
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ValueError("the tensorrt backend needs a CUDA device")
        import tensorrt as trt

        import export.trt_plugin  # noqa: F401 - the plugin must be registered before deserializing
        from export.tensorrt_engine import EngineMetadata, check_compatible, metadata_path

        meta = EngineMetadata.model_validate(json.loads(metadata_path(engine).read_text()))
        major, minor = torch.cuda.get_device_capability(self.device)
        check_compatible(meta, trt.__version__, f"{major}.{minor}")
        self.metadata = meta
        self.report = RuntimeReport("tensorrt", precision=meta.precision)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(engine.read_bytes())
        self.context = self.engine.create_execution_context()
        self.profile = 0  # 0: landscape, 1: portrait (see profiles_for)
        self.k = num_keypoints

    def __call__(self, x: Tensor) -> PoseOutput:
        x = x.to(self.device, torch.float32).contiguous()
        stream = torch.cuda.current_stream(self.device).cuda_stream
        profile = int(x.shape[2] > x.shape[3])
        if profile != self.profile:
            self.context.set_optimization_profile_async(profile, stream)
            self.profile = profile
        from export.tensorrt_engine import INPUT_NAME

        self.context.set_input_shape(INPUT_NAME, tuple(x.shape))
        self.context.set_tensor_address(INPUT_NAME, x.data_ptr())
        outputs = {}
        for name in ("heatmaps", "offsets"):
            shape = tuple(self.context.get_tensor_shape(name))
            outputs[name] = torch.empty(shape, device=self.device, dtype=torch.float32)
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        if not self.context.execute_async_v3(stream):
            raise RuntimeError("TensorRT execution failed")
        return PoseOutput(outputs["heatmaps"], outputs["offsets"])
