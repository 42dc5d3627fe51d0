"""A straightforward per-image, per-pose reference of the grouping, written from SPEC §4 with plain loops.

Independent of ``pose.decode``: numpy, Python loops over pixels, candidates, poses and joints, and the
literal ``scipy.optimize.curve_fit`` call of the authors' refinement. Slow on purpose; tests only.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import curve_fit

from pose.config import DecodeConfig


@dataclass
class RefPoses:
    keypoints: np.ndarray  # (P, K, 3) in base-input pixels
    center_scores: np.ndarray  # (P,)


def _peak_values(m: np.ndarray, kernel: int) -> np.ndarray:
    """Value where a pixel equals the max of its (border-clipped) window, else 0."""
    h, w = m.shape
    r = kernel // 2
    out = np.zeros_like(m)
    for y in range(h):
        for x in range(w):
            window = m[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1]
            if m[y, x] == window.max():
                out[y, x] = m[y, x]
    return out


def _top(values: np.ndarray, n: int) -> list[int]:
    """Indices of the n largest values; ties broken by torch.topk, as in the authors' code."""
    return torch.from_numpy(values.ravel()).topk(min(n, values.size)).indices.tolist()


def _gauss(xy, amp, y0, x0, sigma):  # noqa: ANN001, ANN202 - curve_fit's calling convention
    a, b = xy
    return amp * np.exp(-((b - x0) ** 2 + (a - y0) ** 2) / (2 * sigma**2))


def reference_group(
    heatmaps: list[np.ndarray], keypoints: list[np.ndarray], fused: np.ndarray, scales: list[float], cfg: DecodeConfig
) -> RefPoses:
    """heatmaps[s]: (K+1, h, w); keypoints[s]: (2K, h, w); fused: (K+1, Hb, Wb); one image."""
    kp1, hb, wb = fused.shape
    k = kp1 - 1
    max_ori = heatmaps[scales.index(1.0)][-1].max()
    cands: list[np.ndarray] = []
    cand_scores: list[float] = []
    for heat, kpts, scale in zip(heatmaps, keypoints, scales, strict=True):
        factor = np.float32(1.0 if scale == 1.0 else cfg.scale_decrease)
        center = factor * heat[-1] / heat[-1].max() * max_ori
        h, w = center.shape
        mean_side = (h + w) / 2
        kernel = 7 if mean_side > cfg.pool_thresholds[0] else 5 if mean_side > cfg.pool_thresholds[1] else 3
        peaks = _peak_values(center, kernel)
        ratio = np.float32(wb / w)
        for idx in _top(peaks, cfg.max_people):
            value = peaks.ravel()[idx]
            if value > cfg.keypoint_threshold * factor:
                y, x = divmod(idx, w)
                cands.append(ratio * np.stack([kpts[2 * j : 2 * j + 2, y, x] for j in range(k)]))
                cand_scores.append(float(value))
    # Greedy pose NMS.
    n = len(cands)
    similar = np.zeros((n, n), bool)
    for i in range(n):
        for j in range(n):
            close = sum(np.linalg.norm(cands[i][q] - cands[j][q]) < cfg.pose_nms_distance for q in range(k))
            similar[i, j] = close > cfg.pose_nms_overlap
    ignored: set[int] = set()
    kept: list[int] = []
    for i in range(n):
        if i in ignored:
            continue
        group = [j for j in range(n) if similar[i, j]]
        best = max(group, key=lambda j: (cand_scores[j], -j))
        if best in ignored:
            continue
        kept.append(best)
        ignored.update(group)
    if len(kept) > cfg.max_people:
        kept = sorted(kept, key=lambda j: -cand_scores[j])[: cfg.max_people]
    poses = np.zeros((len(kept), k, 3), np.float32)
    centers = np.array([cand_scores[j] for j in kept], np.float32)
    for p, j in enumerate(kept):
        poses[p, :, :2] = cands[j]
    if not cfg.absorb:
        for p in range(len(kept)):
            for j in range(k):
                poses[p, j, 2] = centers[p] * _heat_bilinear(fused[j], poses[p, j, 0], poses[p, j, 1])
        return RefPoses(poses, centers)
    # Absorption to keypoint-heatmap peaks.
    for j in range(k):
        peaks = _peak_values(fused[j], 5)
        top = _top(peaks, cfg.max_people)
        cxy = [(float(i % wb), float(i // wb)) for i in top]
        cval = [float(peaks.ravel()[i]) if peaks.ravel()[i] > cfg.keypoint_threshold else 0.0 for i in top]
        for p in range(len(kept)):
            x, y = poses[p, j, 0], poses[p, j, 1]
            d = [np.hypot(np.float32(x) - cx, np.float32(y) - cy) for cx, cy in cxy]
            best = int(np.argmin(d))
            if d[best] < cfg.max_absorb_distance:
                poses[p, j, :2] = cxy[best]
                poses[p, j, 2] = centers[p] * cval[best]
            else:
                row = min(max(int(x), 0), hb - 1)  # the authors' swapped lookup
                col = min(max(int(y), 0), wb - 1)
                poses[p, j, 2] = centers[p] * fused[j, row, col]
    if cfg.refine:
        for j in range(k):
            for p in range(len(kept)):
                if poses[p, j, 2] > cfg.adjust_threshold:
                    _refine_joint(fused[j], poses[p, j], centers[p])
    return RefPoses(poses, centers)


def _heat_bilinear(m: np.ndarray, x: float, y: float) -> float:
    h, w = m.shape
    x1, y1 = int(x), int(y)
    x2, y2 = x1 + 1, y1 + 1
    if not (0 <= x1 and x2 < w and 0 <= y1 and y2 < h):
        return 0.0
    u, v = x - x1, y - y1
    return float((1 - u) * (1 - v) * m[y1, x1] + u * (1 - v) * m[y1, x2] + (1 - u) * v * m[y2, x1] + u * v * m[y2, x2])


def _refine_joint(m: np.ndarray, joint: np.ndarray, center: float) -> None:
    h, w = m.shape
    r, c = int(joint[1] + 0.5), int(joint[0] + 0.5)
    if r in (0, h - 1) or c in (0, w - 1):
        return
    r_lo, c_lo = max(0, r - 6), max(0, c - 6)
    window = m[r_lo : min(h - 1, r + 6) + 1, c_lo : min(w - 1, c + 6) + 1]
    rows, cols = window.shape
    ys, xs = np.meshgrid(np.arange(rows), np.arange(cols))
    xdata = np.vstack((xs.ravel(), ys.ravel()))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            amp, y0, x0, _ = curve_fit(
                _gauss, xdata, window.ravel(), p0=(m[r, c], r - r_lo, c - c_lo, 2.0), maxfev=300
            )[0]
    except (RuntimeError, TypeError, ValueError, IndexError):
        return
    joint[0], joint[1], joint[2] = c_lo + x0, r_lo + y0, amp * center
