"""Test-time forward: flip test per scale, then heatmaps fused across scales (SPEC §3.2-3.3).

Works on batches on any device. Per scale it returns the flip-averaged heatmaps and the *absolute*
keypoint positions regressed at every pixel; the fused heatmap is every scale's heatmaps brought to the
scale-1 input resolution and averaged, which is where grouping happens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from pose.models.hrnet import PoseOutput

__all__ = ["ScaleOutput", "flip_test", "offsets_to_keypoints", "up_interpolate"]


@dataclass
class ScaleOutput:
    """One scale's flip-aggregated outputs."""

    heatmaps: Tensor  # (B, K + 1, h, w) keypoint heatmaps then the center heatmap
    keypoints: Tensor  # (B, 2K, h, w) absolute (x, y) of each joint regressed at each pixel, in map pixels


def offsets_to_keypoints(offsets: Tensor) -> Tensor:
    """(B, 2K, h, w) offsets (pixel - joint) to absolute joint positions ``pixel - offset``.

    For inference: written in place into one output, so it does not record gradients.
    """
    b, c, h, w = offsets.shape
    xs = torch.arange(w, device=offsets.device, dtype=offsets.dtype).view(1, 1, 1, w)
    ys = torch.arange(h, device=offsets.device, dtype=offsets.dtype).view(1, 1, h, 1)
    off = offsets.reshape(b, c // 2, 2, h, w)
    joints = torch.empty_like(off)  # written in place: one pass over the maps, no stacked temporaries
    torch.sub(xs, off[:, :, 0], out=joints[:, :, 0])
    torch.sub(ys, off[:, :, 1], out=joints[:, :, 1])
    return joints.view(b, c, h, w)


def up_interpolate(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Integer upsampling that maps map pixel ``i`` exactly onto pixel ``s * i`` (authors' ``up_interpolate``).

    Bilinear with ``align_corners=True`` to ``size - s + 1``, then replicate the last row/column ``s - 1``
    times.
    """
    h, w = x.shape[-2:]
    sh, sw = int(size[0] / h), int(size[1] / w)
    y = F.interpolate(x, size=(size[0] - sh + 1, size[1] - sw + 1), mode="bilinear", align_corners=True)
    return F.pad(y, (0, sw - 1, 0, sh - 1), mode="replicate")


def _shifted_flip(x: Tensor, shift: int) -> Tensor:
    """Mirror the input and move it ``shift`` pixels left, zero-filling the right edge (authors' flip input)."""
    flipped = torch.flip(x, [3])
    out = torch.zeros_like(x)
    out[..., : x.shape[-1] - shift] = flipped[..., shift:]
    return out


def flip_test(
    model: Callable[[Tensor], PoseOutput], x: Tensor, flip_index: list[int] | None, flip_shift: int = 3
) -> ScaleOutput:
    """Forward ``x`` (B, 3, H, W), and its mirrored twin when ``flip_index`` is given, and average them.

    The flipped pass is un-mirrored: heatmap channels are permuted by ``flip_index`` (center kept last),
    regressed joints are permuted, their x mirrored as ``w - 1 - x`` and the map flipped back.
    For HigherHRNet the keypoint channels are the mean of the 2x head and the upsampled 4x heatmaps, and a
    third pass with a 1-pixel shift provides the flipped 2x heatmap, as in the authors' code.
    Joints are mirrored and averaged on the regression grid, and only then brought to the heatmap grid:
    ``w - 1 - x`` is not scale-invariant (mirroring after doubling would move every joint half a 2x pixel).
    """
    if flip_index is None:
        out: PoseOutput = model(x)
        heat = _heatmaps(out, out.heatmaps_2x)
        kpts = offsets_to_keypoints(out.offsets)
    else:
        out, out_f, heat_2x_f = _forward_with_flips(model, x, flip_shift)
        heat = _heatmaps(out, out.heatmaps_2x)
        heat_f = _heatmaps(out_f, heat_2x_f)
        heat_index = [*flip_index, *range(len(flip_index), heat_f.shape[1])]
        heat = (heat + torch.flip(heat_f, [3])[:, heat_index]) / 2
        kpts_f = _unflip_keypoints(offsets_to_keypoints(out_f.offsets), flip_index)
        kpts = (offsets_to_keypoints(out.offsets) + kpts_f) / 2
    return ScaleOutput(heat, _keypoints_to_grid(kpts, (heat.shape[-2], heat.shape[-1])))


def _forward_with_flips(
    model: Callable[[Tensor], PoseOutput], x: Tensor, flip_shift: int
) -> tuple[PoseOutput, PoseOutput, Tensor | None]:
    """The plain and the mirrored pass as one forward of 2B images, split afterwards.

    One launch sequence instead of two: on a GPU the batch fills the device and both passes share one CUDA
    graph; every image is still computed on its own (eval-mode norms do not mix the batch). A 2x head also
    needs the 1-pixel-shifted mirror's 2x heatmaps, a third pass.
    """
    b = x.shape[0]
    both = model(torch.cat([x, _shifted_flip(x, flip_shift)]))
    out = PoseOutput(both.heatmaps[:b], both.offsets[:b], _rows(both.heatmaps_2x, 0, b))
    out_f = PoseOutput(both.heatmaps[b:], both.offsets[b:], _rows(both.heatmaps_2x, b, 2 * b))
    heat_2x_f = model(_shifted_flip(x, 1)).heatmaps_2x if both.heatmaps_2x is not None else None
    return out, out_f, heat_2x_f


def _rows(t: Tensor | None, start: int, stop: int) -> Tensor | None:
    return None if t is None else t[start:stop]


def _unflip_keypoints(kpts: Tensor, flip_index: list[int]) -> Tensor:
    """Joints regressed on a mirrored input, (B, 2K, h, w), back in the unmirrored frame of the same grid."""
    b, _, h, w = kpts.shape
    k = len(flip_index)
    joints = kpts.view(b, k, 2, h, w)[:, flip_index]
    joints = torch.stack((w - joints[:, :, 0] - 1, joints[:, :, 1]), dim=2)  # w = the regression grid's width
    return torch.flip(joints.view(b, 2 * k, h, w), [3])


def _keypoints_to_grid(kpts: Tensor, size: tuple[int, int]) -> Tensor:
    """Joint positions (B, 2K, h, w) on a finer heatmap grid (authors' ``aggregate_results``).

    Coordinates are multiplied by the integer factor (pixel ``i`` <-> finer pixel ``s * i``, no half-pixel
    offset) and regression pixel ``i`` is copied to finer pixels ``s * i .. s * i + s - 1``.
    Identity when the grids agree (4x models).
    """
    if tuple(kpts.shape[-2:]) == tuple(size):
        return kpts
    return F.interpolate(kpts * (size[0] / kpts.shape[-2]), size=size, mode="nearest")


def _heatmaps(out: PoseOutput, heat_2x: Tensor | None) -> Tensor:
    """One orientation's heatmaps at the finest resolution: HigherHRNet keypoints average both heads."""
    if heat_2x is None:
        return out.heatmaps
    size = heat_2x.shape[-2:]
    heat = up_interpolate(out.heatmaps, (size[0], size[1]))
    k = heat_2x.shape[1]
    return torch.cat([(heat[:, :k] + heat_2x) / 2, heat[:, k:]], dim=1)
