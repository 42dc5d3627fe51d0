"""The adaptive convolution: a 3x3 convolution whose taps follow a per-pixel 2x2 affine matrix.

This is the "adaptive representation transformation" of Sun et al., "Bottom-Up Human Pose Estimation by
Ranking Heatmap-Guided Adaptive Keypoint Estimates": a small convolution predicts, at every pixel, a matrix
``T`` that bends and stretches the regular 3x3 grid ``G`` so the kernel can follow a limb at any scale or
orientation. It is a deformable convolution (v1, no modulation) with structured offsets ``T @ G - G``.

The authors' code runs it through an mmdet v1 CUDA kernel. This module is its one pure-torch
implementation (CPU, GPU, ONNX-exportable through ``GridSample``); a fused kernel or a TensorRT plugin
replaces :func:`deform_conv3x3` and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "REGULAR_GRID",
    "AdaptiveConv2d",
    "adaptive_conv",
    "affine_to_offsets",
    "deform_conv3x3",
    "register_implementation",
    "regular_grid",
    "use_implementation",
]

# Rows: (dy, dx) of the 9 taps of a 3x3 kernel, tap k = 3 * row + col. The authors' ``regular_matrix``.
REGULAR_GRID = torch.tensor(
    [[-1.0, -1.0, -1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0], [-1.0, 0.0, 1.0, -1.0, 0.0, 1.0, -1.0, 0.0, 1.0]]
)


def regular_grid(like: Tensor) -> Tensor:
    """:data:`REGULAR_GRID` made on ``like``'s device in its dtype.

    Built there rather than copied from the host, so a forward makes no host-device copy and can be
    captured in a CUDA graph or traced under fake tensors.
    """
    k = torch.arange(9, device=like.device)
    return torch.stack((torch.div(k, 3, rounding_mode="floor") - 1, k % 3 - 1)).to(like.dtype)


def affine_to_offsets(affine: Tensor) -> Tensor:
    """Per-pixel 2x2 matrices to deformable-conv offsets ``T @ G - G``.

    Args:
        affine: Tensor[B, 4, H, W], the row-major entries ``[t00, t01, t10, t11]`` of ``T`` at each pixel;
            ``T`` acts on ``(dy, dx)`` column vectors (the authors' order, not the paper's ``(x, y)``).

    Returns:
        Tensor[B, 18, H, W]: channel ``2k`` is ``dy`` and ``2k + 1`` is ``dx`` of tap ``k``.
    """
    torch._assert(affine.dim() == 4 and affine.shape[1] == 4, f"affine must be (B, 4, H, W), got {tuple(affine.shape)}")
    grid = regular_grid(affine)
    gy = grid[0].view(1, 9, 1, 1)
    gx = grid[1].view(1, 9, 1, 1)
    t00, t01, t10, t11 = affine[:, 0:1], affine[:, 1:2], affine[:, 2:3], affine[:, 3:4]
    dy = t00 * gy + t01 * gx - gy  # (B, 9, H, W)
    dx = t10 * gy + t11 * gx - gx
    return torch.stack((dy, dx), dim=2).flatten(1, 2)


def deform_conv3x3(x: Tensor, offset: Tensor, weight: Tensor, dilation: int = 1) -> Tensor:
    """Deformable 3x3 convolution, stride 1, padding = dilation, no bias, one offset group.

    Tap ``k = 3i + j`` of output pixel ``(h, w)`` samples ``x`` at
    ``(h + (i - 1) * dilation + dy_k, w + (j - 1) * dilation + dx_k)`` with bilinear interpolation; corners
    outside the image contribute zero, so a sample at or beyond one pixel outside the border is zero (the
    mmdet/torchvision rule, which is also ``grid_sample``'s ``padding_mode="zeros"``).

    Args:
        x: Tensor[B, C, H, W].
        offset: Tensor[B, 18, H, W], ``(dy, dx)`` per tap in pixels.
        weight: Tensor[O, C, 3, 3].
        dilation: spacing of the regular grid; the offsets are *not* scaled by it.

    Returns:
        Tensor[B, O, H, W].
    """
    b, c, h, w = x.shape
    torch._assert(offset.shape == (b, 18, h, w), f"offset must be {(b, 18, h, w)}, got {tuple(offset.shape)}")
    torch._assert(
        weight.dim() == 4 and weight.shape[1:] == (c, 3, 3),
        f"weight must be (O, {c}, 3, 3), got {tuple(weight.shape)}",
    )
    grid = regular_grid(x) * dilation
    off = offset.view(b, 9, 2, h, w)
    rows = torch.arange(h, device=x.device, dtype=x.dtype).view(1, 1, h, 1)
    cols = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, 1, w)
    sample_y = rows + grid[0].view(1, 9, 1, 1) + off[:, :, 0]  # (B, 9, H, W)
    sample_x = cols + grid[1].view(1, 9, 1, 1) + off[:, :, 1]
    # grid_sample with align_corners=False maps pixel p to (2p + 1) / size - 1 (valid for size 1 too).
    norm = torch.stack(((2 * sample_x + 1) / w - 1, (2 * sample_y + 1) / h - 1), dim=-1)
    taps = F.grid_sample(
        x, norm.view(b, 9 * h, w, 2), mode="bilinear", padding_mode="zeros", align_corners=False
    )  # (B, C, 9 * H, W)
    columns = taps.reshape(b, c * 9, h * w)  # index c * 9 + k matches weight.flatten(1)
    out = torch.matmul(weight.reshape(weight.shape[0], c * 9), columns)  # (B, O, H * W)
    return out.view(b, -1, h, w)


def _adaptive_conv_torch(x: Tensor, affine: Tensor, weight: Tensor, dilation: int) -> Tensor:
    return deform_conv3x3(x, affine_to_offsets(affine), weight, dilation)


# Swappable implementations of the whole op (same signature): "torch" here; export/ registers a custom
# op (ONNX plugin node) and a fused Triton kernel. Tests pin them to each other.
_IMPLEMENTATIONS: dict[str, Callable[[Tensor, Tensor, Tensor, int], Tensor]] = {"torch": _adaptive_conv_torch}
_active = "torch"


def register_implementation(name: str, fn: Callable[[Tensor, Tensor, Tensor, int], Tensor]) -> None:
    """Make ``fn(x, affine, weight, dilation)`` selectable as ``name``."""
    _IMPLEMENTATIONS[name] = fn


@contextmanager
def use_implementation(name: str) -> Iterator[None]:
    """Run every adaptive convolution through implementation ``name`` inside the block (process-wide)."""
    global _active
    if name not in _IMPLEMENTATIONS:
        raise KeyError(f"no adaptive-conv implementation {name!r}; known: {sorted(_IMPLEMENTATIONS)}")
    previous, _active = _active, name
    try:
        yield
    finally:
        _active = previous


def adaptive_conv(x: Tensor, affine: Tensor, weight: Tensor, dilation: int = 1) -> Tensor:
    """Adaptive 3x3 convolution: the taps of ``weight`` sample ``x`` at ``q + dilation * g + (T - I) g``.

    For dilation 1 the sampling point is ``q + T g``, the paper's formula. For larger dilations the
    effective matrix is ``T + (dilation - 1) I`` because the authors do not scale the offsets.

    Args:
        x: Tensor[B, C, H, W] features.
        affine: Tensor[B, 4, H, W] row-major per-pixel ``T`` acting on ``(dy, dx)``.
        weight: Tensor[O, C, 3, 3].
        dilation: dilation of the regular grid.

    Returns:
        Tensor[B, O, H, W].

    Examples::
        >>> x = torch.randn(2, 8, 16, 16)
        >>> identity = torch.tensor([1.0, 0.0, 0.0, 1.0]).view(1, 4, 1, 1).expand(2, 4, 16, 16)
        >>> adaptive_conv(x, identity, torch.randn(4, 8, 3, 3)).shape
        torch.Size([2, 4, 16, 16])
    """
    return _IMPLEMENTATIONS[_active](x, affine, weight, dilation)


class AdaptiveConv2d(nn.Module):
    """Holds the 3x3 kernel of an adaptive convolution; the affine field comes from the caller.

    No bias, as in the authors' code; one appears only when inference folds the following batch norm in.
    """

    def __init__(self, in_channels: int, out_channels: int, dilation: int = 1) -> None:
        super().__init__()
        if dilation < 1:
            raise ValueError(f"dilation must be >= 1, got {dilation}")
        self.dilation = dilation
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 3, 3))
        self.bias: nn.Parameter | None
        self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / (self.weight.shape[1] * 9) ** 0.5  # the authors' DeformConv init, U(+-1/sqrt(9 C))
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: Tensor, affine: Tensor) -> Tensor:
        if torch.is_autocast_enabled(x.device.type):
            # Mixed-precision training: sampling positions in float16 would round away small learned
            # deformations (1/16 px steps on a 128-160 px grid), so this op runs in float32.
            with torch.autocast(x.device.type, enabled=False):
                return self._add_bias(adaptive_conv(x.float(), affine.float(), self.weight.float(), self.dilation))
        return self._add_bias(adaptive_conv(x, affine, self.weight, self.dilation))

    def _add_bias(self, y: Tensor) -> Tensor:
        return y if self.bias is None else y + self.bias.to(y.dtype).view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        out_c, in_c = self.weight.shape[:2]
        return f"{in_c}, {out_c}" + (f", dilation={self.dilation}" if self.dilation != 1 else "")
