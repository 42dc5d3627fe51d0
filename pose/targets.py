"""Training targets exactly as the authors generate them (SPEC §5.2).

Per sample: keypoint + center heatmaps with one shared weight mask (1 on the union of every drawn
Gaussian's window, a background weight elsewhere), and the pixel-wise offset targets around each
person's center with weights 1/sqrt(area). Data preparation per sample, so plain numpy loops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Targets", "heatmap_targets", "offset_targets"]

AUTHORS_CENTER_INDEX = 17  # joints with index >= 17 get the center sigma; CrowdPose's center (14) does not


@dataclass
class Targets:
    heatmaps: np.ndarray  # (K + 1, R, R)
    heatmap_weight: np.ndarray  # (R, R), shared by every channel
    offsets: np.ndarray  # (2K, R, R): pixel - joint, in output pixels
    offset_weight: np.ndarray  # (2K, R, R): 1/sqrt(area) where supervised


def heatmap_targets(
    joints: np.ndarray, size: int, sigma: float = 2.0, center_sigma: float = 4.0, bg_weight: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian heatmaps and their shared weight mask.

    Args:
        joints: (N, K + 1, 3) per person (x, y, visibility) in output pixels, the center last.
        size: R, the square output size.

    Returns:
        heatmaps (K + 1, R, R) float32 and weight (R, R) float32.
    """
    n_joints = joints.shape[1]
    heat = np.zeros((n_joints, size, size), np.float32)
    weight = np.full((size, size), bg_weight, np.float32)
    for person in joints:
        for idx, (x, y, v) in enumerate(person):
            if v <= 0 or not (0 <= x < size and 0 <= y < size):
                continue
            s = center_sigma if idx >= AUTHORS_CENTER_INDEX else sigma
            x0, x1 = max(0, math.floor(x - 3 * s - 1)), min(size, math.ceil(x + 3 * s + 2))
            y0, y1 = max(0, math.floor(y - 3 * s - 1)), min(size, math.ceil(y + 3 * s + 2))
            xs = np.arange(x0, x1, dtype=np.float32)[None, :]
            ys = np.arange(y0, y1, dtype=np.float32)[:, None]
            g = np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * s**2))
            heat[idx, y0:y1, x0:x1] = np.maximum(heat[idx, y0:y1, x0:x1], g)
            weight[y0:y1, x0:x1] = 1.0
    return heat, weight


def offset_targets(joints: np.ndarray, areas: np.ndarray, size: int, radius: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Offsets ``pixel - joint`` on the square of side ``2 * radius`` at each person's integer center.

    Args:
        joints: (N, K + 1, 3) as in :func:`heatmap_targets`, the center last.
        areas: (N,) person areas in *input* pixels squared (bbox w * h times the input scale squared).
        size: R.

    Returns:
        offsets (2K, R, R) and weights (2K, R, R), float32. Where two people claim a pixel the smaller
        one (by area) keeps it.
    """
    k = joints.shape[1] - 1
    offsets = np.zeros((2 * k, size, size), np.float32)
    weights = np.zeros((2 * k, size, size), np.float32)
    area_map = np.zeros((size, size), np.float32)
    for person, area in zip(joints, areas, strict=True):
        cx, cy, cv = person[-1]
        ct_x, ct_y = int(cx), int(cy)
        if cv < 1 or not (0 <= ct_x < size and 0 <= ct_y < size):
            continue
        for idx in range(k):
            x, y, v = person[idx]
            if v <= 0 or not (0 <= x < size and 0 <= y < size):
                continue
            for py in range(max(0, ct_y - radius), min(ct_y + radius, size)):
                for px in range(max(0, ct_x - radius), min(ct_x + radius, size)):
                    taken = offsets[2 * idx, py, px] != 0 or offsets[2 * idx + 1, py, px] != 0
                    if taken and area_map[py, px] < area:
                        continue
                    offsets[2 * idx, py, px] = px - x
                    offsets[2 * idx + 1, py, px] = py - y
                    weights[2 * idx : 2 * idx + 2, py, px] = 1.0 / math.sqrt(area)
                    area_map[py, px] = area
    return offsets, weights
