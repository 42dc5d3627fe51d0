"""Network outputs of a batch to ranked poses in original-image pixels (SPEC §3.3-4.5).

Fuses every scale's heatmaps at the scale-1 input resolution, groups (:mod:`pose.decode`), maps joints
back through each image's inverse affine, and rescales pose scores by the scoring net. All batch-first
tensor code on the outputs' device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from pose.config import DecodeConfig
from pose.decode import group_poses
from pose.inference import ScaleOutput, up_interpolate
from pose.rescore import ScoringNet, pose_features

__all__ = ["PoseBatch", "fuse_scales", "postprocess"]


@dataclass
class PoseBatch:
    """Poses of a batch, padded to the largest count; ``valid`` marks real ones. Authors' order."""

    keypoints: Tensor  # (B, P, K, 3) x, y, score in original-image pixels
    keypoints_input: Tensor  # (B, P, K, 3) the same in scale-1 network-input pixels
    scores: Tensor  # (B, P) final score: predicted OKS x grouping score (grouping score without a net)
    grouping_scores: Tensor  # (B, P) mean joint score
    center_scores: Tensor  # (B, P)
    boxes: Tensor  # (B, P, 4) x, y, w, h around the keypoints
    valid: Tensor  # (B, P) bool


def fuse_scales(
    heatmaps: list[Tensor],
    base_size: tuple[int, int],
    map_sizes: list[Tensor] | None = None,
    base_sizes: Tensor | None = None,
) -> Tensor:
    """Mean of every scale's heatmaps brought to the scale-1 input size, per-image exact under padding.

    ``up_interpolate`` replicates each map's last row and column; in a padded batch an image's last
    valid row is not the tensor's, so those rows are re-read from the image's own last valid pixel. That
    holds while every image's input is its map times the batch's integer ratio (scales 2, 1, 0.5); at other
    scales (0.75: 96 map rows under 512) each image has its own ratio, and its maps are upsampled alone.

    Args:
        heatmaps: per scale, Tensor[B, C, h_s, w_s], padded at right and bottom.
        base_size: (H, W) of the scale-1 input batch.
        map_sizes: per scale, Tensor[B, 2] valid (h_s, w_s) of each image; None when nothing is padded.
        base_sizes: Tensor[B, 2] valid (H, W) of each image's scale-1 input (with ``map_sizes``).
    """
    fused = []
    per_scale: list[Tensor | None] = list(map_sizes) if map_sizes is not None else [None] * len(heatmaps)
    hh, ww = base_size
    for heat, sizes in zip(heatmaps, per_scale, strict=True):
        if sizes is None:
            fused.append(up_interpolate(heat, base_size))
            continue
        s_h, s_w = hh // heat.shape[-2], ww // heat.shape[-1]
        ratio = torch.tensor([s_h, s_w], device=sizes.device)
        if base_sizes is not None and not bool((base_sizes == sizes * ratio).all()):
            fused.append(_up_interpolate_each(heat, sizes, base_sizes, base_size))
            continue
        up = up_interpolate(heat, base_size)
        b, c = up.shape[:2]
        rows = torch.arange(hh, device=up.device).view(1, hh).minimum((sizes[:, 0:1] - 1) * s_h)  # (B, H)
        cols = torch.arange(ww, device=up.device).view(1, ww).minimum((sizes[:, 1:2] - 1) * s_w)
        up = torch.gather(up, 2, rows.view(b, 1, hh, 1).expand(b, c, hh, ww))
        up = torch.gather(up, 3, cols.view(b, 1, 1, ww).expand(b, c, hh, ww))
        fused.append(up)
    return fused[0] if len(fused) == 1 else torch.stack(fused).mean(0)


def _up_interpolate_each(heat: Tensor, sizes: Tensor, base_sizes: Tensor, size: tuple[int, int]) -> Tensor:
    """Each image's valid map upsampled to its own input size, then padded (replicated) to ``size``."""
    out = []
    for i, ((h, w), (hb, wb)) in enumerate(zip(sizes.tolist(), base_sizes.tolist(), strict=True)):
        up = up_interpolate(heat[i : i + 1, :, :h, :w], (hb, wb))
        out.append(F.pad(up, (0, size[1] - wb, 0, size[0] - hb), mode="replicate"))
    return torch.cat(out)


def postprocess(
    outputs: list[ScaleOutput],
    scales: list[float],
    input_size: tuple[int, int],
    inverse_matrices: Tensor,
    cfg: DecodeConfig,
    scoring_net: ScoringNet | None,
    sticks: list[tuple[int, int]],
    base_sizes: Tensor | None = None,
    map_sizes: list[Tensor] | None = None,
) -> PoseBatch:
    """Group, map back to each image and score.

    Args:
        outputs: per scale (processing order), flip-aggregated maps, Tensor[B, K + 1, h_s, w_s] and
            Tensor[B, 2K, h_s, w_s].
        scales: scale of each entry; contains 1.0.
        input_size: (H, W) of the scale-1 network input batch, where grouping happens.
        inverse_matrices: Tensor[B, 2, 3] scale-1 input pixels -> original image pixels.
        cfg: decoding thresholds; ``cfg.rescore`` False or no net gives the paper's naive score.
        sticks: the scoring feature's sticks.
        base_sizes, map_sizes: valid sizes per image for padded batches (see :func:`group_poses`).
    """
    # Unpadded maps need no per-image border re-reads (two full-resolution gathers per scale).
    padded = base_sizes is not None
    fused = fuse_scales([o.heatmaps for o in outputs], input_size, map_sizes if padded else None, base_sizes)
    poses = group_poses(
        [o.heatmaps for o in outputs], [o.keypoints for o in outputs], fused, scales, cfg, base_sizes, map_sizes
    )
    kin = poses.keypoints
    inv = inverse_matrices.to(kin.device, torch.float64)
    xy = kin[..., :2].double()
    img_xy = (xy @ inv[:, None, :, :2].transpose(-1, -2) + inv[:, None, None, :, 2]).to(kin.dtype)
    kimg = torch.cat([img_xy, kin[..., 2:]], -1)
    scores = poses.scores
    if cfg.rescore and scoring_net is not None:
        net_device = next(scoring_net.parameters()).device
        predicted = scoring_net(pose_features(kimg, sticks).to(net_device)).to(scores.device)
        scores = predicted * scores
    lo = img_xy.amin(2)
    hi = img_xy.amax(2)
    boxes = torch.cat([lo, hi - lo], -1)
    valid = poses.valid
    return PoseBatch(kimg, kin, scores * valid, poses.scores, poses.center_scores, boxes * valid.unsqueeze(-1), valid)
