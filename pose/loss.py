"""The paper's training loss as the authors compute it (SPEC §5.3).

Heatmaps (keypoints and center): weighted squared error, mean over channels and pixels per sample, then
over the batch; the weight mask puts 0.1 on background pixels ("tradeoff" loss). Offsets: smooth-L1 with
beta = 1/9 weighted by 1/sqrt(person area), summed and divided by the number of supervised entries in the
batch. Total = heatmap + 0.01 * offset. HigherHRNet: the heatmap term is taken on each of the three 4x
branches (their channels concatenated against three copies of the target), and its 2x head adds a second
heatmap term (background weight 0.025 in its mask).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["PoseLoss", "heatmap_loss", "offset_loss"]


def heatmap_loss(pred: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """pred, target (B, C, H, W); weight (B, H, W) or (B, 1, H, W), shared by all channels."""
    if weight.dim() == 3:
        weight = weight.unsqueeze(1)
    return ((pred - target) ** 2 * weight).mean(dim=(1, 2, 3)).mean()


def offset_loss(pred: Tensor, target: Tensor, weight: Tensor, beta: float = 1.0 / 9) -> Tensor:
    """Smooth-L1 normalized by the count of supervised entries (x and y counted separately)."""
    diff = (pred - target).abs()
    sl1 = torch.where(diff < beta, 0.5 * diff**2 / beta, diff - 0.5 * beta)
    count = (weight > 0).sum()
    return (sl1 * weight).sum() / count.clamp(min=1)


@dataclass
class PoseLoss:
    heatmap_factor: float = 1.0
    offset_factor: float = 0.01

    def __call__(
        self,
        heatmaps: Tensor,
        offsets: Tensor,
        heat_target: Tensor,
        heat_weight: Tensor,
        off_target: Tensor,
        off_weight: Tensor,
        heatmaps_2x: Tensor | None = None,
        heat_target_2x: Tensor | None = None,
        heat_weight_2x: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Total, heatmap and offset terms.

        ``heatmaps`` has K + 1 channels, or a multiple of them (HigherHRNet's branches), each group
        compared with ``heat_target``. With ``heatmaps_2x`` the 2x head's term joins the heatmap term.
        """
        copies, rest = divmod(heatmaps.shape[1], heat_target.shape[1])
        if rest or not copies:
            raise ValueError(f"{heatmaps.shape[1]} heatmap channels for a {heat_target.shape[1]}-channel target")
        target = heat_target.repeat(1, copies, 1, 1) if copies > 1 else heat_target
        heat = self.heatmap_factor * heatmap_loss(heatmaps, target, heat_weight)
        if heatmaps_2x is not None:
            if heat_target_2x is None or heat_weight_2x is None:
                raise ValueError("the 2x heatmaps need their target and weight")
            heat = heat + self.heatmap_factor * heatmap_loss(heatmaps_2x, heat_target_2x, heat_weight_2x)
        off = self.offset_factor * offset_loss(offsets, off_target, off_weight)
        return heat + off, heat, off
