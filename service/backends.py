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

    def __call__(self, x: Tensor) -> PoseOutput:
        out = self.model(x.half() if self.half else x)
        if not self.half:
            return out
        return PoseOutput(*(t.float() if t is not None else None for t in out))


def create_backend(config: ModelConfig, settings: Settings) -> Backend:
    if settings.backend == "torch":
        return TorchBackend(config, settings)
    raise ValueError(f"backend {settings.backend!r} is not available in this build; use torch")
