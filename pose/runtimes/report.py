"""What every backend is to the pipeline, and what it reports running."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

import torch
from torch import Tensor

from pose.models.hrnet import PoseOutput

__all__ = ["Backend", "RuntimeReport", "describe_runtime"]


class Backend(Protocol):
    """A network runtime: a normalized batch ``(B, 3, H, W)`` to float32 :class:`PoseOutput`."""

    name: str
    device: torch.device

    def __call__(self, x: Tensor) -> PoseOutput: ...


@dataclass
class RuntimeReport:
    """What a backend actually runs, which can differ from what was asked (a fast path that failed)."""

    backend: str = "torch"
    backend_fallback: str | None = None  # why the automatic choice is not ONNX Runtime on a CPU
    precision: str = "float32"
    precision_fallback: str | None = None  # why int8 was asked and float32 runs
    adaptive_conv: str | None = None  # the torch backend's implementation
    adaptive_conv_fallback: str | None = None  # why the fused kernel is not in use, when it was wanted
    cuda_graphs: bool = False
    cuda_graphs_recorded: int = 0
    cuda_graph_memory_bytes: int = 0
    cuda_graph_memory_budget_bytes: int = 0


def describe_runtime(backend: object) -> RuntimeReport:
    """A snapshot of the backend's report with the state of its CUDA graphs (recorded on first use of a shape,
    dropped under the memory budget), for ``/v1/models``, metrics and :attr:`pose.api.PoseEstimator.runtime`."""
    report: RuntimeReport = getattr(backend, "report", None) or RuntimeReport()
    graphs = getattr(backend, "graphs", None)
    if graphs is None:
        return replace(report)
    return replace(
        report,
        cuda_graphs_recorded=len(graphs.graphs),
        cuda_graph_memory_bytes=graphs.memory_bytes,
        cuda_graph_memory_budget_bytes=graphs.memory_budget_bytes,
    )
