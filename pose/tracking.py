"""Identities across video frames: poses of consecutive frames associated into tracks.

Each frame's poses are matched to the live tracks by OKS (or box IoU) with the Hungarian algorithm. A
track is predicted forward by its recent velocity before matching, so two people crossing keep their
identities when one hides the other for a few frames. A track unmatched for more than ``patience``
frames dies; a pose matching no track starts a new one. Ids start at 1 and are never reused within a
tracker, so an id in a stream always means one person.

Keypoints can be smoothed with the One-Euro filter (Casiez et al., CHI 2012): a low-pass filter whose
cutoff rises with speed, steady when a joint rests and quick to follow when it moves. Smoothing is off
by default so the output is the model's raw estimate.

State lives in stacked tensors, one row per live track, so a frame costs a fixed number of tensor ops
plus one assignment, however many people it holds. Letters: T live tracks, N poses in the frame, K
keypoints.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from pose.pipeline import PoseResult

__all__ = [
    "OneEuroState",
    "PoseTracker",
    "TrackedPoses",
    "TrackerConfig",
    "box_iou",
    "frame_times",
    "one_euro",
    "pose_oks",
]

_DEFAULT_SIGMA = 0.07  # per-keypoint OKS falloff when the caller passes no sigmas (about COCO's mean)


@dataclass(frozen=True)
class TrackerConfig:
    """How poses are associated and filtered; the defaults suit 25-30 fps video."""

    match: Literal["oks", "iou"] = "oks"
    min_similarity: float = 0.2  # below it a pose does not continue a track
    patience: int = 15  # frames a track survives unmatched before it dies
    smoothing: bool = False  # One-Euro on keypoints; off = raw output
    min_cutoff: float = 1.0  # Hz: the filter's cutoff at rest; lower is steadier
    beta: float = 0.05  # how fast the cutoff rises with speed (per pixel/s); higher lags less
    d_cutoff: float = 1.0  # Hz: cutoff of the speed estimate that drives the adaptive cutoff
    min_joint_score: float = 0.1  # joints below it are left out of OKS (neither pose must be trusted there)
    motion: bool = True  # predict a track forward by its velocity before matching
    velocity_momentum: float = 0.6  # weight of the previous velocity when it is updated

    def __post_init__(self) -> None:
        if self.match not in ("oks", "iou"):
            raise ValueError(f"match must be 'oks' or 'iou', got {self.match!r}")
        if not 0.0 <= self.min_similarity <= 1.0:
            raise ValueError(f"min_similarity must lie in [0, 1], got {self.min_similarity}")
        if self.patience < 0:
            raise ValueError(f"patience must be >= 0 frames, got {self.patience}")
        for name in ("min_cutoff", "d_cutoff"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0 Hz, got {getattr(self, name)}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if not 0.0 <= self.velocity_momentum < 1.0:
            raise ValueError(f"velocity_momentum must lie in [0, 1), got {self.velocity_momentum}")


@dataclass
class TrackedPoses:
    """One frame's people with their track ids: the same people as the input, in the same order."""

    keypoints: Tensor  # (N, K, 3) x, y, score; x, y smoothed when smoothing is on
    scores: Tensor  # (N,)
    boxes: Tensor  # (N, 4) x, y, w, h
    track_ids: Tensor  # (N,) int64, >= 1

    def __len__(self) -> int:
        return len(self.track_ids)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of every pair of ``x, y, w, h`` boxes: Tensor[A, 4] x Tensor[B, 4] -> Tensor[A, B]."""
    a0, a1 = a[:, None, :2], a[:, None, :2] + a[:, None, 2:]
    b0, b1 = b[None, :, :2], b[None, :, :2] + b[None, :, 2:]
    inter = (torch.minimum(a1, b1) - torch.maximum(a0, b0)).clamp(min=0).prod(-1)
    union = a[:, None, 2:].prod(-1) + b[None, :, 2:].prod(-1) - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-9), torch.zeros_like(inter))


def pose_oks(a: Tensor, b: Tensor, areas: Tensor, sigmas: Tensor, min_joint_score: float = 0.0) -> Tensor:
    """Object keypoint similarity of every pair of poses, over joints both poses score above the threshold.

    Args:
        a: Tensor[A, K, 3] reference poses (x, y, score); ``areas`` Tensor[A] is their object scale s^2.
        b: Tensor[B, K, 3] candidate poses.
        sigmas: Tensor[K] per-keypoint falloff, as in COCO evaluation.

    Returns:
        Tensor[A, B] in [0, 1]; 0 where the two poses share no trusted joint.
    """
    d2 = (a[:, None, :, :2] - b[None, :, :, :2]).pow(2).sum(-1)  # (A, B, K)
    var = (2 * sigmas) ** 2  # (K,)
    e = torch.exp(-d2 / (2 * areas.clamp(min=1.0)[:, None, None] * var))
    both = (a[:, None, :, 2] >= min_joint_score) & (b[None, :, :, 2] >= min_joint_score)  # (A, B, K)
    count = both.sum(-1)
    return torch.where(count > 0, (e * both).sum(-1) / count.clamp(min=1), torch.zeros_like(d2[..., 0]))


@dataclass
class OneEuroState:
    """Filter state of M signals: last filtered value, last filtered derivative, time of last sample."""

    value: Tensor  # (M, ...) filtered value
    derivative: Tensor  # (M, ...) filtered derivative (units per second)
    time: Tensor  # (M,) seconds


def _alpha(cutoff: Tensor, dt: Tensor) -> Tensor:
    tau = 1.0 / (2 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


def one_euro(
    state: OneEuroState, x: Tensor, time: Tensor, min_cutoff: float, beta: float, d_cutoff: float
) -> OneEuroState:
    """One step of the One-Euro filter for M signals sampled at ``time`` (Tensor[M]); returns the new state.

    The cutoff is ``min_cutoff + beta * |speed|``, so a resting joint is low-passed hard (no jitter) and a
    moving one barely at all (no lag).
    """
    dt = (time - state.time).clamp(min=1e-6).to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    derivative = (x - state.value) / dt
    a_d = _alpha(torch.as_tensor(d_cutoff, dtype=x.dtype), dt)
    derivative = a_d * derivative + (1 - a_d) * state.derivative
    cutoff = min_cutoff + beta * derivative.abs()
    a = _alpha(cutoff, dt)
    return OneEuroState(a * x + (1 - a) * state.value, derivative, time.clone())


class PoseTracker:
    """Online tracker of one video: feed frames in order with :meth:`update` or :meth:`update_batch`.

    >>> tracker = PoseTracker(TrackerConfig(smoothing=True), sigmas=est.config.keypoints.sigmas)  # doctest: +SKIP
    >>> tracked = tracker.update(est.predict(frame), time_s=0.0)  # doctest: +SKIP
    >>> tracked.track_ids  # tensor([1, 2])  # doctest: +SKIP
    """

    def __init__(self, config: TrackerConfig | None = None, sigmas: Sequence[float] | None = None) -> None:
        self.config = config or TrackerConfig()
        self.sigmas = torch.tensor(list(sigmas), dtype=torch.float32) if sigmas is not None else None
        self.reset()

    def reset(self) -> None:
        """Forget every track; ids still never repeat, so streams before and after stay unambiguous."""
        if not hasattr(self, "_next_id"):
            self._next_id = 1
        self._ids = torch.zeros(0, dtype=torch.int64)  # (T,)
        self._poses: Tensor | None = None  # (T, K, 3) last raw observation
        self._boxes = torch.zeros(0, 4)  # (T, 4) last observed box
        self._velocity = torch.zeros(0, 2)  # (T, 2) pixels per second
        self._seen = torch.zeros(0, dtype=torch.float64)  # (T,) time of last observation
        self._missed = torch.zeros(0, dtype=torch.int64)  # (T,) consecutive unmatched frames
        self._filter: OneEuroState | None = None  # (T, K, 2) smoothed joints
        self._last_time: float | None = None

    @property
    def num_tracks(self) -> int:
        """Live tracks, including ones currently unmatched but within their patience."""
        return len(self._ids)

    def _similarity(self, keypoints: Tensor, boxes: Tensor, time_s: float) -> Tensor:
        """(T, N) similarity of each live track's predicted pose to each new pose."""
        assert self._poses is not None
        dt = (time_s - self._seen).float()[:, None]  # (T, 1)
        shift = self._velocity * dt if self.config.motion else torch.zeros_like(self._velocity)  # (T, 2)
        if self.config.match == "iou":
            predicted = self._boxes.clone()
            predicted[:, :2] += shift
            return box_iou(predicted, boxes)
        predicted = self._poses.clone()
        predicted[..., :2] += shift[:, None, :]
        k = predicted.shape[1]
        sigmas = self.sigmas if self.sigmas is not None else torch.full((k,), _DEFAULT_SIGMA)
        if len(sigmas) != k:
            raise ValueError(f"the tracker has {len(sigmas)} sigmas but the poses have {k} keypoints")
        areas = self._boxes[:, 2:].prod(-1)  # (T,) box area as the object scale
        return pose_oks(predicted, keypoints, areas, sigmas, self.config.min_joint_score)

    def _assign(self, similarity: Tensor) -> tuple[Tensor, Tensor]:
        """Hungarian matching on similarity, keeping pairs at least ``min_similarity``: (track rows, poses)."""
        if similarity.numel() == 0:
            return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)
        rows, cols = linear_sum_assignment(similarity.numpy(), maximize=True)
        keep = similarity.numpy()[rows, cols] >= max(self.config.min_similarity, 1e-9)
        return torch.from_numpy(rows[keep]).long(), torch.from_numpy(cols[keep]).long()

    def update(self, poses: PoseResult | TrackedPoses, time_s: float) -> TrackedPoses:
        """Track ids (and smoothed keypoints) of one frame's poses; frames must come in time order."""
        if self._last_time is not None and time_s < self._last_time:
            raise ValueError(f"frames must come in time order: {time_s} s after {self._last_time} s")
        keypoints = poses.keypoints.detach().float().cpu()  # (N, K, 3)
        scores = poses.scores.detach().float().cpu()
        boxes = poses.boxes.detach().float().cpu()
        if keypoints.dim() != 3 or keypoints.shape[-1] != 3:
            raise ValueError(f"keypoints must be (N, K, 3), got {tuple(keypoints.shape)}")
        n, k = keypoints.shape[:2]
        if self._poses is None:
            self._poses = torch.zeros(0, k, 3)
            self._filter = OneEuroState(torch.zeros(0, k, 2), torch.zeros(0, k, 2), torch.zeros(0, dtype=torch.float64))
        elif self._poses.shape[1] != k:
            raise ValueError(f"poses have {k} keypoints but the tracker holds poses with {self._poses.shape[1]}")
        self._last_time = time_s
        similarity = self._similarity(keypoints, boxes, time_s) if n and self.num_tracks else torch.zeros(0, 0)
        rows, cols = self._assign(similarity)

        # continue matched tracks
        ids = torch.zeros(n, dtype=torch.int64)
        ids[cols] = self._ids[rows]
        dt = (time_s - self._seen[rows]).float().clamp(min=1e-6)[:, None]  # (M, 1)
        centers_new = boxes[cols, :2] + boxes[cols, 2:] / 2
        centers_old = self._boxes[rows, :2] + self._boxes[rows, 2:] / 2
        m = self.config.velocity_momentum
        self._velocity[rows] = m * self._velocity[rows] + (1 - m) * (centers_new - centers_old) / dt
        self._poses[rows] = keypoints[cols]
        self._boxes[rows] = boxes[cols]
        self._seen[rows] = time_s
        self._missed += 1
        self._missed[rows] = 0

        # births: poses matching no track
        born = torch.ones(n, dtype=torch.bool)
        born[cols] = False
        new = born.nonzero().flatten()
        new_ids = torch.arange(self._next_id, self._next_id + len(new), dtype=torch.int64)
        self._next_id += len(new)
        ids[new] = new_ids

        out_keypoints = keypoints.clone()
        filt = self._filter
        assert filt is not None
        if self.config.smoothing and len(rows):
            t = torch.full((len(rows),), time_s, dtype=torch.float64)
            old = OneEuroState(filt.value[rows], filt.derivative[rows], filt.time[rows])
            cfg = self.config
            step = one_euro(old, keypoints[cols, :, :2], t, cfg.min_cutoff, cfg.beta, cfg.d_cutoff)
            filt.value[rows], filt.derivative[rows], filt.time[rows] = step.value, step.derivative, step.time
            out_keypoints[cols, :, :2] = step.value
        elif len(rows):
            filt.value[rows] = keypoints[cols, :, :2]
            filt.time[rows] = time_s

        self._ids = torch.cat([self._ids, new_ids])
        self._poses = torch.cat([self._poses, keypoints[new]])
        self._boxes = torch.cat([self._boxes, boxes[new]])
        self._velocity = torch.cat([self._velocity, torch.zeros(len(new), 2)])
        self._seen = torch.cat([self._seen, torch.full((len(new),), time_s, dtype=torch.float64)])
        self._missed = torch.cat([self._missed, torch.zeros(len(new), dtype=torch.int64)])
        self._filter = OneEuroState(
            torch.cat([filt.value, keypoints[new, :, :2]]),
            torch.cat([filt.derivative, torch.zeros(len(new), k, 2)]),
            torch.cat([filt.time, torch.full((len(new),), time_s, dtype=torch.float64)]),
        )
        self._drop(self._missed <= self.config.patience)
        return TrackedPoses(out_keypoints, scores, boxes, ids)

    def _drop(self, alive: Tensor) -> None:
        """Keep only the tracks where ``alive`` (Tensor[T] bool) holds: deaths after the patience ran out."""
        assert self._poses is not None and self._filter is not None
        self._ids, self._poses, self._boxes = self._ids[alive], self._poses[alive], self._boxes[alive]
        self._velocity, self._seen, self._missed = self._velocity[alive], self._seen[alive], self._missed[alive]
        f = self._filter
        self._filter = OneEuroState(f.value[alive], f.derivative[alive], f.time[alive])

    def update_batch(self, frames: Sequence[PoseResult | TrackedPoses], times: Sequence[float]) -> list[TrackedPoses]:
        """:meth:`update` over consecutive frames; association is sequential, so the frames go in order."""
        if len(frames) != len(times):
            raise ValueError(f"got {len(frames)} frames but {len(times)} times")
        return [self.update(f, float(t)) for f, t in zip(frames, times, strict=True)]


def frame_times(num_frames: int, fps: float, start: float = 0.0) -> np.ndarray:
    """Timestamps of evenly spaced frames, for callers that have frames but no container times."""
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    return start + np.arange(num_frames) / fps
