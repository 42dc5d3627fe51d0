"""Synthetic multi-person videos with ground-truth tracks: the drawn figures of :mod:`pose.data.synthetic`,
walking, swaying and changing depth so that they cross and hide one another.

Each person keeps one figure (its proportions, limb angles and clothes) for the whole clip, as a real
person keeps their clothes; what changes smoothly from frame to frame is where it stands, how far away it
is (its drawn height) and how it leans. People walk straight across, entering and leaving the picture;
every person after the first meets an earlier one head-on in the middle of the clip, and the nearer
person (drawn later, bigger) hides the farther one for a few frames. Visibility is exact, as in the
still scenes: a stamp map records which person each pixel shows.

Letters: T frames, N people in a frame, K keypoints (17).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pose.data.synthetic import _OWNERS, _background, _Canvas, _figure, _rot

__all__ = ["FrameTruth", "SyntheticVideo", "VideoSceneConfig", "render_video"]


@dataclass(frozen=True)
class VideoSceneConfig:
    """What a clip contains; the defaults make a 2-second, 25 fps clip the embedded model can follow."""

    size: tuple[int, int] = (256, 384)  # (H, W)
    num_frames: int = 50
    fps: float = 25.0
    people: tuple[int, int] = (2, 4)  # inclusive range per clip
    height: tuple[float, float] = (0.45, 0.8)  # drawn height / image height, sampled per person
    speed: tuple[float, float] = (0.25, 0.5)  # walking speed in image widths per second
    depth_change: float = 0.15  # relative height change over a clip (walking towards or away)
    sway: float = 8.0  # degrees of lean, oscillating
    clutter: tuple[int, int] = (0, 6)
    noise: float = 3.0  # sensor noise standard deviation, grey levels

    def __post_init__(self) -> None:
        if min(self.size) < 64:
            raise ValueError(f"frame size must be at least 64x64, got {self.size}")
        if self.num_frames < 1 or self.fps <= 0:
            raise ValueError(f"need num_frames >= 1 and fps > 0, got {self.num_frames} and {self.fps}")
        if not 1 <= self.people[0] <= self.people[1]:
            raise ValueError(f"people range must satisfy 1 <= min <= max, got {self.people}")
        if not 0 < self.height[0] <= self.height[1]:
            raise ValueError(f"height range must satisfy 0 < min <= max, got {self.height}")
        if not 0 <= self.speed[0] <= self.speed[1]:
            raise ValueError(f"speed range must satisfy 0 <= min <= max, got {self.speed}")


@dataclass
class FrameTruth:
    """Ground truth of one frame: the people drawn in it, at least partly inside the image."""

    track_ids: np.ndarray  # (N,) int64, >= 1, one per person for the whole clip
    keypoints: np.ndarray  # (N, K, 3) x, y, v with COCO visibility (2 visible, 1 hidden, 0 outside)
    boxes: np.ndarray  # (N, 4) x, y, w, h of the person's visible pixels (zeros when fully hidden)
    areas: np.ndarray  # (N,) visible pixels
    full_areas: np.ndarray  # (N,) pixels the person would cover alone: visible / full is how much shows


@dataclass
class SyntheticVideo:
    """A rendered clip: RGB frames, their times and the ground truth of each."""

    frames: list[np.ndarray]  # T x (H, W, 3) uint8 RGB
    times: np.ndarray  # (T,) seconds
    truth: list[FrameTruth]
    fps: float

    def save(self, path: str | Path) -> Path:
        """Write the clip as an MP4 (H.264 where FFmpeg has it, see :class:`pose.video.VideoWriter`)."""
        from pose.video import VideoWriter

        with VideoWriter(path, self.fps) as writer:
            for frame in self.frames:
                writer.write(frame)
        return Path(path)


@dataclass
class _Walker:
    """One person's figure and smooth path."""

    track_id: int
    keypoints: np.ndarray  # (K, 2) upright body frame, unit height
    parts: list  # the figure's shapes, back to front
    x0: float  # pixels, start of the pelvis
    y: float  # pixels, pelvis line
    speed: float  # pixels per second, signed
    height: float  # pixels at t = 0
    growth: float  # relative height change per second
    sway_phase: float
    sway_rate: float  # Hz

    def place(self, t: float, sway: float) -> tuple[np.ndarray, np.ndarray]:
        """Row-vector transform and pelvis position at ``t``: a straight walk, leaning back and forth."""
        height = self.height * (1 + self.growth * t)
        angle = sway * math.sin(2 * math.pi * self.sway_rate * t + self.sway_phase)
        return _rot(angle).T * height, np.array([self.x0 + self.speed * t, self.y])


def _walkers(rng: np.random.Generator, config: VideoSceneConfig) -> list[_Walker]:
    """People on one ground line; each after the first walks towards an earlier one and meets them (same
    spot, opposite directions) in the middle of the clip, so paths cross on every clip."""
    h, w = config.size
    duration = config.num_frames / config.fps
    n = int(rng.integers(config.people[0], config.people[1] + 1))
    walkers: list[_Walker] = []
    for i in range(n):
        kp, parts = _figure(rng)
        speed = w * rng.uniform(*config.speed)
        if walkers:
            partner = walkers[int(rng.integers(len(walkers)))]
            meet = duration * rng.uniform(0.3, 0.7)
            speed = -math.copysign(speed, partner.speed)
            x0 = partner.place(meet, 0.0)[1][0] - speed * meet
        else:  # starts on one side, walking towards the other
            speed *= rng.choice([-1.0, 1.0])
            x0 = w * (0.5 - math.copysign(rng.uniform(0.15, 0.3), speed))
        walkers.append(
            _Walker(
                track_id=i + 1,
                keypoints=kp,
                parts=parts,
                x0=float(x0),
                y=h * 0.5 + rng.uniform(-0.05, 0.05) * h,
                speed=float(speed),
                height=h * rng.uniform(*config.height),
                growth=rng.uniform(-config.depth_change, config.depth_change) / max(duration, 1e-6),
                sway_phase=rng.uniform(0, 2 * math.pi),
                sway_rate=rng.uniform(0.3, 0.8),
            )
        )
    return walkers


def _frame(
    background: np.ndarray, walkers: list[_Walker], t: float, config: VideoSceneConfig, rng: np.random.Generator
) -> tuple[np.ndarray, FrameTruth]:
    h, w = config.size
    canvas = _Canvas(background.copy())
    placed = [walker.place(t, config.sway) for walker in walkers]
    order = np.argsort([m[0, 0] ** 2 + m[0, 1] ** 2 for m, _ in placed], kind="stable")  # farther (smaller) first
    keypoints, owners, full_areas = {}, {}, {}
    for index in order:
        walker, (m, shift) = walkers[index], placed[index]
        stamps: dict[str, set[int]] = defaultdict(set)
        alone = np.zeros((h, w), np.uint8)
        for name, poly, color, outline in walker.parts:
            pts = poly @ m + shift
            stamps[name].add(canvas.fill(pts, color, int(index), outline))
            cv2.fillPoly(alone, [np.round(pts * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
        full_areas[index] = int(np.count_nonzero(alone))
        keypoints[index] = walker.keypoints @ m + shift
        owners[index] = [set().union(*(stamps[n] for n in names)) for names in _OWNERS]
    image = canvas.image
    if config.noise > 0:
        noise = rng.normal(0, config.noise, image.shape).astype(np.float32)
        image = np.clip(image.astype(np.float32) + noise, 0, 255).astype(np.uint8)

    person_map = np.asarray(canvas.owners, np.int16)[canvas.stamps]  # (H, W) walker index, < 0 none
    ids, kps, boxes, areas, fulls = [], [], [], [], []
    for index, walker in enumerate(walkers):
        kp = np.zeros((17, 3), np.float32)
        for j, (x, y) in enumerate(keypoints[index]):
            if 0 <= x <= w - 1 and 0 <= y <= h - 1:
                stamp = int(canvas.stamps[math.floor(y + 0.5), math.floor(x + 0.5)])
                kp[j] = (x, y, 2 if stamp in owners[index][j] else 1)
        if not kp[:, 2].any():
            continue  # entirely outside the image
        mask = (person_map == index).astype(np.uint8)
        ids.append(walker.track_id)
        kps.append(kp)
        boxes.append(cv2.boundingRect(mask))
        areas.append(int(np.count_nonzero(mask)))
        fulls.append(full_areas[index])
    truth = FrameTruth(
        np.asarray(ids, np.int64),
        np.asarray(kps, np.float32).reshape(-1, 17, 3),
        np.asarray(boxes, np.float32).reshape(-1, 4),
        np.asarray(areas, np.float64),
        np.asarray(fulls, np.float64),
    )
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), truth


def render_video(seed: int, config: VideoSceneConfig | None = None) -> SyntheticVideo:
    """Render one clip; the same seed and config give the same pixels and tracks."""
    config = config or VideoSceneConfig()
    rng = np.random.default_rng(seed)
    h, w = config.size
    background = _background(rng, h, w, config.clutter)
    walkers = _walkers(rng, config)
    times = np.arange(config.num_frames) / config.fps
    frames, truth = [], []
    for t in times:
        image, frame_truth = _frame(background, walkers, float(t), config, rng)
        frames.append(image)
        truth.append(frame_truth)
    return SyntheticVideo(frames, times, truth, config.fps)
