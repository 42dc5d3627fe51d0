"""Image to network input, exactly as the authors' test pipeline (SPEC §3.1), and the way back.

The short side goes to ``size * scale``; the long side is first rounded *up* to a multiple of 64 at
scale 1, then multiplied by the scale (a scaled side is rounded up to a multiple of 32, which the
authors' scales already give), and the image is centred in that canvas by a similarity warp
(``cv2.warpAffine``, bilinear, zero border). The matrices are built from float32 point triples with
``cv2.getAffineTransform`` like the authors', so coordinates map back to the same float values.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pose.config import InputConfig

__all__ = ["ImageTransform", "image_to_tensor", "plan_transform", "resize_image", "warp_batch"]


@dataclass(frozen=True)
class ImageTransform:
    """Where one image sits in the network input at one scale."""

    image_size: tuple[int, int]  # (width, height) of the original image
    input_size: tuple[int, int]  # (width, height) of the network input at this scale
    center: tuple[int, int]  # image point mapped to the input's centre
    scale_w: float  # authors' "scale" (image width covered / 200)
    matrix: np.ndarray  # (2, 3) float64, image -> input pixels

    def inverse(self, base_size: tuple[int, int] | None = None) -> np.ndarray:
        """(2, 3) matrix from pixels of an input of ``base_size`` (default this one) back to the image."""
        return _affine(self.center, self.scale_w, base_size or self.input_size, inverse=True)


def _affine(center: tuple[int, int], scale_w: float, out_size: tuple[int, int], inverse: bool = False) -> np.ndarray:
    """The authors' ``get_affine_transform`` with no rotation and no shift."""
    src_w = scale_w * 200.0
    dst_w, dst_h = out_size
    src = np.zeros((3, 2), dtype=np.float32)
    dst = np.zeros((3, 2), dtype=np.float32)
    src[0] = center
    src[1] = np.asarray(center, dtype=np.float64) + np.array([0.0, -0.5 * src_w])
    dst[0] = [dst_w * 0.5, dst_h * 0.5]
    dst[1] = np.array([dst_w * 0.5, dst_h * 0.5]) + np.array([0.0, -0.5 * dst_w])
    src[2] = _third_point(src[0], src[1])
    dst[2] = _third_point(dst[0], dst[1])
    return cv2.getAffineTransform(dst, src) if inverse else cv2.getAffineTransform(src, dst)


def _third_point(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    direction = a - b
    return b + np.array([-direction[1], direction[0]], dtype=np.float32)


NETWORK_STRIDE = 32  # stem (4) x three halvings to the lowest-resolution branch, fused back by exact x2 upsampling


def _network_size(pixels: int) -> int:
    """A scaled side rounded up to a multiple of :data:`NETWORK_STRIDE`, the sizes the network's branches
    fuse at. The authors' sizes (the scale-1 short side and 64-multiples at scales like 2 and 0.5) already
    are, so this changes nothing for them; any other scale would otherwise fail in the network."""
    return max(NETWORK_STRIDE, -(-pixels // NETWORK_STRIDE) * NETWORK_STRIDE)


def plan_transform(width: int, height: int, input_size: int, scale: float = 1.0) -> ImageTransform:
    """Network input size, centre and matrix for an image (authors' ``get_multi_scale_size``)."""
    if width < 1 or height < 1:
        raise ValueError(f"image must be at least 1x1, got {width}x{height}")
    center = (int(width / 2.0 + 0.5), int(height / 2.0 + 0.5))
    if width < height:
        w_in = _network_size(int(input_size * scale))
        h_in = _network_size(int(int((input_size / width * height + 63) // 64 * 64) * scale))
        scale_w = width / 200.0
    else:
        h_in = _network_size(int(input_size * scale))
        w_in = _network_size(int(int((input_size / height * width + 63) // 64 * 64) * scale))
        scale_w = w_in / h_in * height / 200.0
    matrix = _affine(center, scale_w, (w_in, h_in))
    return ImageTransform((width, height), (w_in, h_in), center, scale_w, matrix)


def resize_image(image: np.ndarray, transform: ImageTransform) -> np.ndarray:
    """Warp an HWC uint8 image into the network input canvas (bilinear, zero border), on the CPU."""
    return cv2.warpAffine(image, transform.matrix, transform.input_size)


def image_to_tensor(image: np.ndarray, cfg: InputConfig) -> Tensor:
    """HWC uint8 RGB to a normalized (1, 3, H, W) float tensor (``ToTensor`` then ``Normalize``)."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(cfg.mean).view(3, 1, 1)
    std = torch.tensor(cfg.std).view(3, 1, 1)
    return ((x - mean) / std).unsqueeze(0)


def warp_batch(images: Tensor, matrices: Tensor, out_size: tuple[int, int], cfg: InputConfig) -> Tensor:
    """Warp and normalize a batch on its own device (the service path; equals cv2 to ~1 grey level).

    Args:
        images: Tensor[B, 3, Hi, Wi] uint8 or float in 0..255, RGB; smaller images zero-padded at the
            right/bottom. Samples past an image's border then read those zeros, which is what
            ``cv2.BORDER_CONSTANT`` gives.
        matrices: Tensor[B, 2, 3] image -> input pixel matrices (``ImageTransform.matrix``).
        out_size: (width, height) of the network input shared by the batch.

    Returns:
        Tensor[B, 3, H, W] normalized float32.
    """
    b, _, hi, wi = images.shape
    w_out, h_out = out_size
    dev = images.device
    full = torch.cat(
        [matrices.double(), torch.tensor([[[0.0, 0.0, 1.0]]], device=dev, dtype=torch.float64).expand(b, 1, 3)], 1
    )
    inv = torch.linalg.inv(full)[:, :2]  # (B, 2, 3) input -> image
    ys, xs = torch.meshgrid(
        torch.arange(h_out, device=dev, dtype=torch.float64),
        torch.arange(w_out, device=dev, dtype=torch.float64),
        indexing="ij",
    )
    pts = torch.stack([xs, ys, torch.ones_like(xs)], -1).view(1, -1, 3)  # (1, H*W, 3)
    src = pts @ inv.transpose(1, 2)  # (B, H*W, 2) image pixels
    norm = torch.stack([(2 * src[..., 0] + 1) / wi - 1, (2 * src[..., 1] + 1) / hi - 1], -1)
    warped = F.grid_sample(
        images.float(),
        norm.view(b, h_out, w_out, 2).float(),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )
    mean = torch.tensor(cfg.mean, device=dev).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(cfg.std, device=dev).view(1, 3, 1, 1) * 255.0
    return (warped - mean) / std
