"""Drawn scenes as request bodies: the embedded model finds their figures, so service tests need no photos."""

from __future__ import annotations

import functools

import cv2
import numpy as np
import pytest

from pose.config import DEFAULT_MODEL
from pose.data.synthetic import SceneConfig, render_scene

SCENE_SIZE = (640, 425)  # (width, height): a landscape image, not the model's square input


@functools.cache
def scene_jpeg(seed: int = 2) -> bytes:
    """A 640x425 JPEG of 3-4 large, unoccluded figures (seed 2: four, all found by the embedded model)."""
    config = SceneConfig(size=SCENE_SIZE[::-1], people=(3, 4), height=(0.5, 0.9), noise_prob=0.0, occluder_prob=0.0)
    image, _ = render_scene(np.random.default_rng(seed), config)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert ok
    return data.tobytes()


def embedded_weights_present() -> bool:
    return (DEFAULT_MODEL / "1" / "model.pth").is_file()


needs_embedded_model = pytest.mark.skipif(
    not embedded_weights_present(), reason="the embedded model's weights are not in this checkout"
)
