"""Network runtimes behind one interface: a callable from a normalized batch to :class:`PoseOutput`.

PyTorch, ONNX Runtime and TensorRT live here, beside each other; ``export/`` only produces the files the
last two load. The rest of the path (preprocessing, flip test, grouping, scoring) is
:class:`pose.pipeline.BatchPipeline` and is the same for every backend.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from pose.checkpoint import load_weights
from pose.config import ModelConfig
from pose.models.fold import fold_batch_norms
from pose.models.hrnet import PoseHRNet, PoseOutput, create_model
from pose.ops.adaptive_conv import use_implementation
from service.cuda_graphs import GraphedNetwork
from service.schemas import RuntimeInfo
from service.settings import Settings

log = logging.getLogger("pose.service")


class Backend(Protocol):
    """What the pipeline needs from a backend."""

    name: str
    device: torch.device

    def __call__(self, x: Tensor) -> PoseOutput: ...


@dataclass
class RuntimeReport:
    """What a backend actually runs, which can differ from what was asked (a fast path that failed)."""

    backend: str = "torch"
    backend_fallback: str | None = None  # why the automatic choice is not ONNX Runtime on a CPU
    precision: str = "float32"
    adaptive_conv: str | None = None  # the torch backend's implementation
    adaptive_conv_fallback: str | None = None  # why the fused kernel is not in use, when it was wanted
    cuda_graphs: bool = False


class TorchBackend:
    """PyTorch on CPU or CUDA, lean for inference.

    Batch norms are folded into the convolutions at load. On CUDA the network runs channels-last, in
    float16 when asked, through the fused adaptive-conv kernel once it has passed a self-check, and as
    replayed CUDA graphs (:mod:`service.cuda_graphs`). The output convolutions stay in float32, so the
    outputs are float32 in every precision.
    """

    name = "torch"

    def __init__(self, config: ModelConfig, settings: Settings) -> None:
        self.device = torch.device(settings.device)
        self.dtype = torch.float16 if settings.half else torch.float32
        model = create_model(config)
        weights = settings.weights or config.resolve(config.weights)
        if weights is None:
            raise FileNotFoundError(f"model {config.name} names no weights; set POSE_WEIGHTS")
        load_weights(model, weights)
        model.eval()
        fold_batch_norms(model)
        cuda = self.device.type == "cuda"
        self.memory_format = torch.channels_last if cuda else torch.contiguous_format
        if self.dtype != torch.float32:
            float32_output_layers(model)
            if settings.float32_heads:
                float32_heads(model)
        model = low_precision(model.to(self.device), self.dtype)
        self.model = model.to(memory_format=self.memory_format)  # type: ignore[call-overload]
        if cuda:
            torch.backends.cudnn.benchmark = True  # fixed shapes per graph: let cuDNN time its algorithms
            if settings.float32_heads:
                # cuDNN rounds float32 convolutions to TensorFloat-32 (float16's 10-bit mantissa) by
                # default, which would undo the float32 heads; the float16 backbone is unaffected.
                torch.backends.cudnn.allow_tf32 = False
        # The adaptive convolutions live in the heads: they run in the heads' precision.
        heads_dtype = torch.float32 if settings.float32_heads else self.dtype
        self.adaptive_conv, fallback = select_adaptive_conv(settings.adaptive_conv, self.device, heads_dtype)
        use_graphs = cuda if settings.cuda_graphs is None else settings.cuda_graphs
        if use_graphs and not cuda:
            raise ValueError("CUDA graphs need a CUDA device")
        self.graphs = GraphedNetwork(self._forward, settings.cuda_graph_memory_mb * 2**20) if use_graphs else None
        precision = str(self.dtype).removeprefix("torch.") + (" (float32 heads)" if settings.float32_heads else "")
        self.report = RuntimeReport(
            "torch", precision=precision, adaptive_conv=self.adaptive_conv, adaptive_conv_fallback=fallback
        )
        self.report.cuda_graphs = use_graphs

    def _forward(self, x: Tensor) -> PoseOutput:
        with use_implementation(self.adaptive_conv):
            return self.model(x)

    def __call__(self, x: Tensor) -> PoseOutput:
        x = x.to(self.device, self.dtype, memory_format=self.memory_format)
        return self.graphs(x) if self.graphs is not None else self._forward(x)  # float32 outputs


class OnnxRuntimeBackend:
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
        options.intra_op_num_threads = torch.get_num_threads()  # what start-up chose for this container
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        if self.device.type == "cuda" and "CUDAExecutionProvider" not in self.session.get_providers():
            raise RuntimeError("onnxruntime has no CUDA provider here; install onnxruntime-gpu or use device cpu")
        self.report = RuntimeReport("onnx")
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


class _Float32(nn.Module):
    """A part of the network evaluated in float32 on low-precision inputs; its output stays float32."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module.float()

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x.float())


ModuleT = TypeVar("ModuleT", bound=nn.Module)


def low_precision(model: ModuleT, dtype: torch.dtype) -> ModuleT:
    """``model.to(dtype)``, in place, except the parts marked to stay float32 (:func:`float32_output_layers`,
    :func:`float32_heads`): their weights are never rounded to ``dtype`` and back."""
    kept = {id(t) for m in model.modules() if isinstance(m, _Float32) for t in (*m.parameters(), *m.buffers())}
    for module in model.modules():
        for tensors in (module._parameters, module._buffers):
            for t in tensors.values():
                if t is not None and t.is_floating_point() and id(t) not in kept:
                    t.data = t.data.to(dtype)
    return model


def float32_output_layers(model: PoseHRNet) -> None:
    """Run the network's output convolutions in float32, in place, around a float16 or bfloat16 body
    (then :func:`low_precision` converts the rest).

    Regressed offsets reach 100 map pixels, where float16 steps by 1/16 of a map pixel (a quarter of an
    image pixel): the poses would move by more than the agreement the service promises. Heatmaps and
    offsets come out in float32, at the cost of three 1x1 convolutions.
    """
    layers = model.final_layers
    for i, conv in enumerate(layers):
        if isinstance(conv, nn.Conv2d):
            layers[i] = _Float32(conv)


def float32_heads(model: PoseHRNet) -> None:
    """Run both heads in float32, in place, around a float16 or bfloat16 backbone (with
    :func:`float32_output_layers`, before :func:`low_precision`).

    Rounding inside the heads is what moves poses most: the embedded model's poses on drawn scenes agreed
    with float32 to 95.5% (counts equal on 4 of 8 scenes) with float16 heads and to 98.0% (7 of 8) with
    float32 heads, in a CPU preview (docs/performance.md). The price is the regression head's two
    256-channel adaptive convolutions at float32 rate. Weights shared by the heatmap branches stay shared.
    """
    for transition in ("transition_cls", "transition_reg"):
        setattr(model, transition, _Float32(getattr(model, transition)))
    for branches in (model.multi_level_layers_4x_heatmap, model.multi_level_layers_4x_regression):
        for i, branch in enumerate(branches):
            branches[i] = _Float32(branch)
    if hasattr(model, "deconv_layers"):  # HigherHRNet's 2x heatmap head
        model.deconv_layers[0] = _Float32(model.deconv_layers[0])


def describe_runtime(backend: Backend) -> RuntimeInfo:
    """The backend's :class:`RuntimeReport` and the state of its CUDA graphs, for /v1/models and metrics."""
    report: RuntimeReport = getattr(backend, "report", RuntimeReport())
    graphs: GraphedNetwork | None = getattr(backend, "graphs", None)
    return RuntimeInfo(
        backend=report.backend,
        backend_fallback=report.backend_fallback,
        precision=report.precision,
        adaptive_conv=report.adaptive_conv,
        adaptive_conv_fallback=report.adaptive_conv_fallback,
        cuda_graphs=report.cuda_graphs,
        cuda_graphs_recorded=len(graphs.graphs) if graphs is not None else 0,
        cuda_graph_memory_bytes=graphs.memory_bytes if graphs is not None else 0,
        cuda_graph_memory_budget_bytes=graphs.memory_budget_bytes if graphs is not None else 0,
    )


def select_adaptive_conv(
    choice: str,
    device: torch.device,
    dtype: torch.dtype,
    check: Callable[[torch.device, torch.dtype], object] | None = None,
) -> tuple[str, str | None]:
    """The adaptive-conv implementation to run, and why the fused kernel is not it when it was wanted.

    ``auto`` tries the fused Triton kernel on CUDA: it is compiled and checked against the torch op at
    start-up, and any failure falls back to the torch op with an error in the log, so an optional fast path
    never stops the service. Only an explicit ``triton`` refuses to start without it.
    """
    if choice == "torch" or (choice == "auto" and device.type != "cuda"):
        return "torch", None
    try:
        if check is None:
            from export.triton_kernel import self_check

            check = self_check
        check(device, dtype)
    except Exception as err:
        reason = f"{type(err).__name__}: {str(err)[:300]}"
        if choice == "triton":
            raise RuntimeError(f"the fused adaptive convolution is unusable on {device} ({reason})") from err
        log.error("the fused adaptive convolution is unusable on %s, using the torch op: %s", device, reason)
        return "torch", reason
    return "triton", None


def automatic_backend(config: ModelConfig, settings: Settings) -> Backend:
    """Torch on CUDA (the lean path above). On a CPU, ONNX Runtime on the portable graph, once it has matched
    the torch network at start-up: its graph optimizations and GridSample make it several times faster
    there (docs/performance.md). The graph is exported once per model and weights into
    ``settings.onnx_cache``; any failure (a model without an exportable graph, onnxruntime missing, a
    mismatch) keeps torch, says why in the log and in the runtime report, and never stops the service.
    """
    reference = TorchBackend(config, settings)
    if reference.device.type != "cpu":
        return reference
    try:
        path = (
            settings.onnx_path or _recorded_portable_onnx(config) or _cached_portable_onnx(config, settings, reference)
        )
        candidate = OnnxRuntimeBackend(path, config.keypoints.num_keypoints, "cpu", config.input.stride)
        _check_agreement(candidate, reference)
    except Exception as err:
        reason = f"{type(err).__name__}: {str(err)[:300]}"
        log.error("ONNX Runtime is not used on this CPU, the torch network is: %s", reason)
        reference.report.backend_fallback = reason
        return reference
    return candidate


def _recorded_portable_onnx(config: ModelConfig) -> Path | None:
    path = next((config.resolve(a.path) for a in config.onnx if a.variant == "portable"), None)
    return path if path is not None and path.is_file() else None


def _cached_portable_onnx(config: ModelConfig, settings: Settings, reference: TorchBackend) -> Path:
    """The portable graph of this model and weights in the cache, exported there when missing.

    Written to a temporary name and renamed, so pods sharing the cache never read half a file.
    """
    from export.engine_cache import cache_entry
    from export.onnx_export import export_onnx

    # The exporter's version is part of the name: a graph written by another torch is exported again.
    path = cache_entry(config, settings.onnx_cache, settings.weights) / f"model-torch{torch.__version__}.onnx"
    if path.is_file():
        return path
    log.info("exporting the portable ONNX graph of %s to %s (once per model and weights)", config.name, path)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    export_onnx(reference.model, partial, "portable", (config.input.size, config.input.size))
    partial.replace(path)
    return path


def _check_agreement(candidate: Backend, reference: Backend, tolerance: float = 1e-3) -> None:
    """Raise unless both give the same heatmaps and offsets on a seeded input (relative to their scale)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 128, 192, generator=g)
    with torch.inference_mode():
        want, got = reference(x), candidate(x)
    for name, a, b in (("heatmaps", got.heatmaps, want.heatmaps), ("offsets", got.offsets, want.offsets)):
        error = float((a.float().cpu() - b.float().cpu()).abs().max())
        if not error <= tolerance * max(1.0, float(b.abs().max())):
            raise RuntimeError(f"{name} differ from the torch network by {error:.3g}")


def create_backend(config: ModelConfig, settings: Settings) -> Backend:
    """The configured runtime, its files resolved from the settings, then the model config."""
    k = config.keypoints.num_keypoints
    if settings.backend == "auto":
        return automatic_backend(config, settings)
    if settings.backend == "torch":
        return TorchBackend(config, settings)
    if settings.backend == "onnx":
        path = settings.onnx_path or _recorded_portable_onnx(config)
        if path is None:
            raise FileNotFoundError(
                f"model {config.name} has no portable ONNX; run pose-export onnx or set POSE_ONNX_PATH"
            )
        return OnnxRuntimeBackend(path, k, settings.device, config.input.stride)
    engine = settings.engine_path
    if engine is None and settings.engine_cache is not None:
        from export.engine_cache import ENGINE_FILE, cache_entry

        engine = cache_entry(config, settings.engine_cache, settings.weights) / ENGINE_FILE
    engine = engine or config.resolve(f"{config.version}/model.plan")
    if engine is None:
        raise FileNotFoundError(
            "no TensorRT engine; build one with pose-export tensorrt, or set POSE_ENGINE_PATH or POSE_ENGINE_CACHE"
        )
    return TensorRTBackend(engine, k, settings.device)
