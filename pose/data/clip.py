"""Short synthetic clips: a camera panning across one drawn scene, for stream demos, tests and benchmarks.

Panning keeps every figure's shape and moves them all by a known offset per frame, so a tracker that
works must keep each figure's id for the whole clip.
"""

from __future__ import annotations

import numpy as np

from pose.data.synthetic import SceneConfig, render_scene

__all__ = ["panning_clip"]


def panning_clip(
    seed: int, frames: int, size: tuple[int, int] = (240, 320), step: int = 3, people: tuple[int, int] = (2, 3)
) -> list[np.ndarray]:
    """``frames`` BGR uint8 images of ``size`` (H, W): a window sliding ``step`` pixels right per frame over
    a scene drawn ``step * (frames - 1)`` pixels wider."""
    if frames < 1 or step < 0:
        raise ValueError(f"need frames >= 1 and step >= 0, got {frames} and {step}")
    h, w = size
    config = SceneConfig(
        size=(h, w + step * (frames - 1)), people=people, height=(0.5, 0.85), outside_prob=0.0, occluder_prob=0.0
    )
    scene, _ = render_scene(np.random.default_rng(seed), config)
    return [np.ascontiguousarray(scene[:, i * step : i * step + w]) for i in range(frames)]
