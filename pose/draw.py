"""Skeleton overlays for the CLI and the service."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import cv2
import numpy as np

from pose.results import Person

__all__ = ["draw_people", "encode_image", "track_colors"]


def _palette(n: int) -> list[tuple[int, int, int]]:
    colors = (colorsys.hsv_to_rgb(i / max(n, 1), 0.8, 1.0) for i in range(n))
    return [(int(255 * r), int(255 * g), int(255 * b)) for r, g, b in colors]


def track_colors(track_ids: Sequence[int]) -> list[tuple[int, int, int]]:
    """One colour per track id, the same in every frame (golden-ratio hues, so neighbouring ids differ)."""
    colors = (colorsys.hsv_to_rgb((0.618034 * i) % 1.0, 0.8, 1.0) for i in track_ids)
    return [(int(255 * r), int(255 * g), int(255 * b)) for r, g, b in colors]


def draw_people(
    image: np.ndarray,
    people: Sequence[Person],
    skeleton: Sequence[tuple[int, int]],
    min_joint_score: float = 0.05,
    colors: Sequence[tuple[int, int, int]] | None = None,
) -> np.ndarray:
    """A copy of the HWC RGB ``image`` with every person's skeleton; joints below the score are hidden.
    ``colors`` (one per person) keeps a tracked person's colour across video frames."""
    canvas = np.ascontiguousarray(image.copy())
    thickness = max(1, round(max(image.shape[:2]) / 400))
    limit = 4 * max(image.shape[:2])  # a diverged joint far outside the image is not drawn
    for person, color in zip(people, colors if colors is not None else _palette(len(people)), strict=True):
        pts = [
            (int(round(x)), int(round(y))) if s >= min_joint_score and abs(x) < limit and abs(y) < limit else None
            for x, y, s in person.keypoints
        ]
        for a, b in skeleton:
            pa, pb = pts[a], pts[b]
            if pa is not None and pb is not None:
                cv2.line(canvas, pa, pb, color, thickness, cv2.LINE_AA)
        for p in pts:
            if p is not None:
                cv2.circle(canvas, p, thickness + 1, color, -1, cv2.LINE_AA)
    return canvas


def encode_image(image: np.ndarray, ext: str = ".jpg") -> bytes:
    """Encode an RGB image as JPEG or PNG bytes."""
    ok, buf = cv2.imencode(ext, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"cannot encode image as {ext}")
    return buf.tobytes()
