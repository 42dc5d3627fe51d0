"""Run an exported graph with ONNX Runtime as a network callable (CPU, or CUDA with device buffers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pose.models.hrnet import PoseOutput


class OnnxRuntimeNetwork:
    """``(B, 3, H, W) -> PoseOutput`` through an ONNX Runtime session.

    On CUDA the input and outputs stay on the GPU: they are torch tensors bound to the session by pointer,
    so the decoder that follows reads them in place.
    """

    name = "onnx"

    def __init__(
        self, path: str | Path, num_keypoints: int, device: str | torch.device = "cpu", stride: int = 4
    ) -> None:
        import onnxruntime as ort

        if Path(path).suffix != ".onnx" or not Path(path).is_file():
            raise FileNotFoundError(f"no ONNX model at {path}; run pose-export onnx first")
        self.device = torch.device(device)
        self.k = num_keypoints
        self.stride = stride
        providers = (
            ["CUDAExecutionProvider", "CPUExecutionProvider"]
            if self.device.type == "cuda"
            else ["CPUExecutionProvider"]
        )
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        if self.device.type == "cuda" and "CUDAExecutionProvider" not in self.session.get_providers():
            raise RuntimeError("onnxruntime has no CUDA provider here; install onnxruntime-gpu or use device cpu")
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, x: Tensor) -> PoseOutput:
        b, _, h, w = x.shape
        if self.device.type != "cuda":
            heat, off = self.session.run(self.output_names, {self.input_name: x.float().cpu().numpy()})
            return PoseOutput(torch.from_numpy(heat), torch.from_numpy(off))
        x = x.float().contiguous()
        heat = torch.empty(b, self.k + 1, h // self.stride, w // self.stride, device=self.device)
        off = torch.empty(b, 2 * self.k, h // self.stride, w // self.stride, device=self.device)
        binding = self.session.io_binding()
        index = self.device.index or 0
        binding.bind_input(self.input_name, "cuda", index, np.float32, tuple(x.shape), x.data_ptr())
        for name, t in zip(self.output_names, (heat, off), strict=True):
            binding.bind_output(name, "cuda", index, np.float32, tuple(t.shape), t.data_ptr())
        self.session.run_with_iobinding(binding)
        return PoseOutput(heat, off)
