"""Training augmentation exactly as the authors' ``RandomAffineTransform`` and ``RandomHorizontalFlip`` (SPEC §5.1).

One similarity map (centre, scale, rotation) is drawn per sample and applied at two resolutions: the
image is warped to the S x S network input, the loss mask and the joints to the R x R output
(R = S / stride). Both matrices come from the same formula, so they are one map scaled to each size.
The flip then mirrors the image exactly (u -> S - 1 - u) but the joints with ``x -> R - x - 1``, which
leaves flipped samples a 0.75 output px (3 input px) leftward target shift, as the authors' code does.

Pure numpy/cv2 functions; the random draws are taken from a caller-owned ``numpy.random.Generator`` so
a sample is reproducible from its seed. Letters: N people, K keypoints (K + 1 with the center),
H/W image size, S input size, R output size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "AffineParams",
    "AugmentRanges",
    "affine_matrix",
    "augment",
    "eval_params",
    "flip_image",
    "flip_joints",
    "flip_mask",
    "input_area_scale",
    "sample_params",
    "warp_image",
    "warp_labels",
    "warp_joints",
    "warp_mask",
    "with_center",
]


@dataclass(frozen=True)
class AugmentRanges:
    """The authors' ``DATASET`` augmentation settings (scale type "short")."""

    max_rotation: float = 30.0  # degrees, uniform in (-max, max)
    min_scale: float = 0.75
    max_scale: float = 1.5
    max_translate: float = 40.0  # in units of ``scale`` (image px / 200), per axis
    flip_prob: float = 0.5


@dataclass(frozen=True)
class AffineParams:
    """One sample's map: the image square of side ``200 * scale`` around ``center`` fills the input."""

    center: tuple[float, float]  # image px mapped to the middle of the input
    scale: float  # side of the square crop / 200, image px
    rotation: float = 0.0  # degrees, the authors' ``aug_rot``
    flip: bool = False


def sample_params(
    width: int, height: int, rng: np.random.Generator, ranges: AugmentRanges | None = None
) -> AffineParams:
    """Draw scale, rotation, translation and flip in the authors' order.

    ``scale = min(h, w) / 200 * U[min, max)``, ``rot = U(-max_rot, max_rot)``, then the centre moves by
    ``randint(-t * scale, t * scale)`` per axis (bounds truncated toward zero, as numpy's legacy
    ``randint`` does with float bounds) and finally ``flip = U[0, 1) < flip_prob``.
    """
    r = ranges or AugmentRanges()
    scale = min(height, width) / 200.0
    scale *= rng.random() * (r.max_scale - r.min_scale) + r.min_scale
    rotation = (rng.random() * 2 - 1) * r.max_rotation
    cx, cy = width / 2.0, height / 2.0
    if r.max_translate > 0:
        low, high = int(-r.max_translate * scale), int(r.max_translate * scale)
        if high > low:
            cx += int(rng.integers(low, high))
            cy += int(rng.integers(low, high))
    flip = bool(rng.random() < r.flip_prob)
    return AffineParams((cx, cy), scale, rotation, flip)


def eval_params(width: int, height: int) -> AffineParams:
    """No augmentation: the centred square of the short side, no rotation, no flip."""
    return AffineParams((width / 2.0, height / 2.0), min(height, width) / 200.0)


def affine_matrix(center: tuple[float, float], scale: float, size: int, rotation: float = 0.0) -> np.ndarray:
    """The authors' training map (``_get_affine_matrix``) from image px to a ``size`` x ``size`` canvas.

    ``x' = size / (200 * scale) * (x - center) + size / 2``, then rotated by ``-rotation`` degrees about
    the canvas centre. Without rotation it equals the test-time ``get_affine_transform``
    (:func:`pose.preprocess.plan_transform` for a square input); that one has no rotation argument and
    builds its matrix from float32 point triples, so training keeps the authors' direct float64 form.

    Returns:
        (2, 3) float64 matrix for ``cv2.warpAffine``.
    """
    h = 200.0 * scale
    t = np.array(
        [
            [size / h, 0.0, size * (-float(center[0]) / h + 0.5)],
            [0.0, size / h, size * (-float(center[1]) / h + 0.5)],
            [0.0, 0.0, 1.0],
        ]
    )
    if rotation != 0:
        rad = -rotation * math.pi / 180.0  # the authors negate "to match direction of rotation from cropping"
        sn, cs = math.sin(rad), math.cos(rad)
        rot = np.array([[cs, -sn, 0.0], [sn, cs, 0.0], [0.0, 0.0, 1.0]])
        shift = np.eye(3)
        shift[:2, 2] = -size / 2
        unshift = np.eye(3)
        unshift[:2, 2] = size / 2
        t = unshift @ rot @ shift @ t
    return t[:2]


def input_area_scale(scale: float, input_size: int) -> float:
    """The authors' ``final_scale = (S / (200 * scale))^2``: image px^2 to input px^2."""
    return (input_size / (200.0 * scale)) ** 2


def warp_image(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """HWC image to a ``size`` x ``size`` canvas (bilinear, zero border)."""
    return cv2.warpAffine(image, matrix, (size, size))


def warp_mask(mask: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """(H, W) 0/1 mask to (size, size) float32 0/1, through uint8 and a 0.5 threshold like the authors.

    The zero border means pixels outside the warped image get weight 0.
    """
    warped = cv2.warpAffine((mask * 255).astype(np.uint8), matrix, (size, size)) / 255
    return (warped > 0.5).astype(np.float32)


def warp_joints(joints: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(N, K + 1, 3) joints with (x, y) mapped by ``matrix``; visibility untouched, unlabeled joints too."""
    out = np.array(joints, dtype=np.float64, copy=True)
    out[..., :2] = out[..., :2] @ matrix[:, :2].T + matrix[:, 2]
    return out


def with_center(flip_index: list[int]) -> list[int]:
    """The K-joint flip permutation extended with the center (index K maps to itself)."""
    return [*flip_index, len(flip_index)]


def flip_image(image: np.ndarray) -> np.ndarray:
    """Exact mirror: input column u goes to S - 1 - u."""
    return np.ascontiguousarray(image[:, ::-1])


def flip_mask(mask: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(mask[:, ::-1])


def flip_joints(joints: np.ndarray, flip_index: list[int], size: int) -> np.ndarray:
    """(N, K + 1, 3) joints reordered by ``flip_index`` (center included) with ``x -> size - x - 1``."""
    if joints.shape[1] != len(flip_index):
        raise ValueError(f"flip_index has {len(flip_index)} entries for {joints.shape[1]} joints (center included)")
    out = joints[:, flip_index].copy()
    out[..., 0] = size - out[..., 0] - 1
    return out


def augment(
    image: np.ndarray,
    mask: np.ndarray,
    joints: np.ndarray,
    areas: np.ndarray,
    params: AffineParams,
    input_size: int,
    output_size: int,
    flip_index: list[int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Affine warp then optional flip, the authors' ``Compose([RandomAffineTransform, RandomHorizontalFlip])``.

    Args:
        image: (H, W, 3) uint8 RGB.
        mask: (H, W) 0/1 loss mask.
        joints: (N, K + 1, 3) image px, the center last.
        areas: (N,) person areas in image px^2.
        flip_index: K + 1 entries, see :func:`with_center`.

    Returns:
        image (S, S, 3) uint8, mask (R, R) float32, joints (N, K + 1, 3) output px, areas (N,) input px^2.
    """
    in_matrix = affine_matrix(params.center, params.scale, input_size, params.rotation)
    out_mask, out_joints = warp_labels(mask, joints, params, output_size, flip_index)
    areas = np.asarray(areas, dtype=np.float64) * input_area_scale(params.scale, input_size)
    image = warp_image(image, in_matrix, input_size)
    if params.flip:
        image = flip_image(image)
    return image, out_mask, out_joints, areas


def warp_labels(
    mask: np.ndarray, joints: np.ndarray, params: AffineParams, output_size: int, flip_index: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """The loss mask and joints of :func:`augment` on an ``output_size`` grid (HigherHRNet's 2x head uses a
    second one): the same affine scaled to that resolution, then the flip ``x -> output_size - x - 1``."""
    matrix = affine_matrix(params.center, params.scale, output_size, params.rotation)
    mask = warp_mask(mask, matrix, output_size)
    joints = warp_joints(joints, matrix)
    if params.flip:
        mask = flip_mask(mask)
        joints = flip_joints(joints, flip_index, output_size)
    return mask, joints
