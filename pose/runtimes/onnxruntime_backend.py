"""ONNX Runtime sessions as backends: the portable graph whole, or a backbone graph then a heads graph."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pose.models.hrnet import PoseOutput
from pose.runtimes.report import RuntimeReport

__all__ = ["ArenaBound", "OnnxRuntimeBackend", "SplitOnnxBackend", "cpu_session"]


def cpu_session(path: str | Path, providers: list[str] | None = None) -> Any:
    """An ONNX Runtime session with every graph optimization, on as many threads as torch was given (what
    start-up chose for this container, not the node's core count)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3  # errors only: its warnings about unused initializers are noise here
    return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])


class ArenaBound:
    """ONNX Runtime's CPU arena keeps the largest working set any run needed, for the life of the session: a
    fast path for the shapes a service runs all day, a leak for a rare wide image. Once :meth:`settle_arena`
    was called (after warm-up), a run on an input larger than every run before gives its extra arena memory
    back when it ends (the arena's shrinkage); the runs within that size keep the arena's speed."""

    arena_bound: int | None = None  # input elements; None: not settled, never shrink
    _largest = 0

    def settle_arena(self) -> None:
        """From now on, runs on inputs larger than any so far return what they add to the arena."""
        self.arena_bound = self._largest

    def run_options(self, x: Tensor) -> Any:
        if self.arena_bound is None:
            self._largest = max(self._largest, x.numel())
            return None
        if x.numel() <= self.arena_bound:
            return None
        import onnxruntime as ort

        options = ort.RunOptions()
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        return options


def _check_graph(path: str | Path) -> None:
    if Path(path).suffix != ".onnx" or not Path(path).is_file():
        raise FileNotFoundError(f"no ONNX model at {path}; run pose-export onnx first")


class OnnxRuntimeBackend(ArenaBound):
    """``(B, 3, H, W) -> PoseOutput`` through an ONNX Runtime session.

    On CUDA the input and outputs stay on the GPU: they are torch tensors bound to the session by pointer,
    so the decoder that follows reads them in place.
    """

    name = "onnx"

    def __init__(
        self, path: str | Path, num_keypoints: int, device: str | torch.device = "cpu", stride: int = 4
    ) -> None:
        _check_graph(path)
        self.device = torch.device(device)
        self.k = num_keypoints
        self.stride = stride
        cuda = self.device.type == "cuda"
        self.session = cpu_session(path, ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else None)
        if cuda and "CUDAExecutionProvider" not in self.session.get_providers():
            raise RuntimeError("onnxruntime has no CUDA provider here; install onnxruntime-gpu or use device cpu")
        self.report = RuntimeReport("onnx")
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, x: Tensor) -> PoseOutput:
        b, _, h, w = x.shape
        if self.device.type != "cuda":
            feed = {self.input_name: x.float().cpu().numpy()}
            heat, off = self.session.run(self.output_names, feed, self.run_options(x))
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


class SplitOnnxBackend(ArenaBound):
    """``(B, 3, H, W) -> PoseOutput`` on a CPU through two sessions: image to backbone features, then
    features to heatmaps and offsets.

    Split so that the backbone can run quantized while the heads (whose offsets reach 100 map pixels, and
    whose adaptive convolutions sample between pixels) stay float32; :attr:`seconds` keeps the time each
    part has taken, so a benchmark can say where it goes.
    """

    name = "onnx"

    def __init__(self, backbone: str | Path, heads: str | Path, precision: str = "float32") -> None:
        _check_graph(backbone)
        _check_graph(heads)
        self.device = torch.device("cpu")
        self.backbone = cpu_session(backbone)
        self.heads = cpu_session(heads)
        self.report = RuntimeReport("onnx", precision=precision)
        self.seconds = {"backbone": 0.0, "heads": 0.0}

    def __call__(self, x: Tensor) -> PoseOutput:
        start = time.perf_counter()
        options = self.run_options(x)
        (features,) = self.backbone.run(None, {"image": x.float().cpu().numpy()}, options)
        middle = time.perf_counter()
        heat, off = self.heads.run(None, {"features": features}, options)
        self.seconds["backbone"] += middle - start
        self.seconds["heads"] += time.perf_counter() - middle
        return PoseOutput(torch.from_numpy(heat), torch.from_numpy(off))
