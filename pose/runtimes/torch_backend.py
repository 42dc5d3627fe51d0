"""PyTorch on CPU or CUDA, lean for inference: folded batch norms, checked fast paths, CUDA graphs."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from pose.checkpoint import load_weights
from pose.config import ModelConfig
from pose.errors import MissingCheckpointError
from pose.models.fold import fold_batch_norms
from pose.models.hrnet import PoseOutput, create_model
from pose.ops.adaptive_conv import use_implementation
from pose.runtimes.cuda_graphs import GraphedNetwork
from pose.runtimes.options import RuntimeOptions
from pose.runtimes.precision import float32_heads, float32_output_layers, low_precision
from pose.runtimes.report import RuntimeReport

__all__ = ["TorchBackend", "select_adaptive_conv", "weights_of"]

log = logging.getLogger("pose.runtimes")


def weights_of(config: ModelConfig, options: RuntimeOptions) -> Path:
    """The checkpoint the network loads: the options' override, else the config's."""
    weights = options.weights or config.resolve(config.weights)
    if weights is None:
        raise MissingCheckpointError(f"model {config.name} names no weights in its config; pass weights")
    return Path(weights)


class TorchBackend:
    """PyTorch on CPU or CUDA, lean for inference.

    Batch norms are folded into the convolutions at load. On CUDA the network runs channels-last, in
    float16 when asked, through the fused adaptive-conv kernel once it has passed a self-check, and as
    replayed CUDA graphs (:mod:`pose.runtimes.cuda_graphs`). The output convolutions stay in float32, so the
    outputs are float32 in every precision.
    """

    name = "torch"

    def __init__(self, config: ModelConfig, options: RuntimeOptions) -> None:
        self.device = torch.device(options.device)
        self.dtype = torch.float16 if options.half else torch.float32
        model = create_model(config)
        load_weights(model, weights_of(config, options))
        model.eval()
        fold_batch_norms(model)
        cuda = self.device.type == "cuda"
        self.memory_format = torch.channels_last if cuda else torch.contiguous_format
        if self.dtype != torch.float32:
            float32_output_layers(model)
            if options.float32_heads:
                float32_heads(model)
        model = low_precision(model.to(self.device), self.dtype)
        self.model = model.to(memory_format=self.memory_format)  # type: ignore[call-overload]
        if cuda:
            torch.backends.cudnn.benchmark = True  # fixed shapes per graph: let cuDNN time its algorithms
            if options.float32_heads:
                # cuDNN rounds float32 convolutions to TensorFloat-32 (float16's 10-bit mantissa) by
                # default, which would undo the float32 heads; the float16 backbone is unaffected.
                torch.backends.cudnn.allow_tf32 = False
        # The adaptive convolutions live in the heads: they run in the heads' precision.
        heads_dtype = torch.float32 if options.float32_heads else self.dtype
        self.adaptive_conv, fallback = select_adaptive_conv(options.adaptive_conv, self.device, heads_dtype)
        use_graphs = cuda if options.cuda_graphs is None else options.cuda_graphs
        if use_graphs and not cuda:
            raise ValueError("CUDA graphs need a CUDA device")
        budget = options.cuda_graph_memory_mb * 2**20
        self.graphs = GraphedNetwork(self._forward, budget) if use_graphs else None
        precision = str(self.dtype).removeprefix("torch.") + (" (float32 heads)" if options.float32_heads else "")
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


def select_adaptive_conv(
    choice: str,
    device: torch.device,
    dtype: torch.dtype,
    check: Callable[[torch.device, torch.dtype], object] | None = None,
) -> tuple[str, str | None]:
    """The adaptive-conv implementation to run, and why the fused kernel is not it when it was wanted.

    ``auto`` tries the fused Triton kernel on CUDA: it is compiled and checked against the torch op at
    start-up, and any failure falls back to the torch op with an error in the log, so an optional fast path
    never stops a run. Only an explicit ``triton`` refuses to start without it.
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
