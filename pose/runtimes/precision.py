"""Low-precision torch networks that keep the layers where rounding moves poses in float32."""

from __future__ import annotations

from typing import TypeVar

import torch
from torch import Tensor, nn

from pose.models.hrnet import PoseHRNet

__all__ = ["float32_heads", "float32_output_layers", "low_precision"]


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
