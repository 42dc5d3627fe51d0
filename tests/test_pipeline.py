"""A batch of images of different sizes gives each image exactly what it gets alone."""

from __future__ import annotations

import numpy as np
import pytest

from pose.api import PoseEstimator
from pose.config import DEFAULT_MODEL
from pose.data.synthetic import SceneConfig, render_scene

from .scenes import needs_embedded_model


@needs_embedded_model
@pytest.mark.parametrize("scales", [None, [1.0, 0.75]], ids=["default", "non-dividing-scale"])
def test_mixed_size_batch_equals_one_at_a_time(scales: list[float] | None) -> None:
    """Also at a scale whose maps do not divide the input (0.75: 96 rows under 512), where each image's
    upsampling has its own ratio."""
    est = PoseEstimator.from_config(DEFAULT_MODEL)
    sizes = [(425, 640), (640, 425), (256, 256), (300, 500), (500, 300)]  # (H, W)
    rng = np.random.default_rng(5)
    images = [
        render_scene(rng, SceneConfig(size=size, people=(2, 4), height=(0.4, 0.9)))[0][..., ::-1] for size in sizes
    ]
    assert len({est.pipeline.run([im], refine=False)[1].shapes[0] for im in images}) >= 3  # several input shapes
    batch, timings = est.pipeline.run(images, scales=scales, refine=False)
    assert len(timings.shapes) >= 3
    for image, got in zip(images, batch, strict=True):
        alone = est.predict(image, scales, refine=False, min_score=0)
        assert got.keypoints.shape == alone.keypoints.shape
        np.testing.assert_allclose(got.keypoints.numpy(), alone.keypoints.numpy(), atol=1e-4)
        np.testing.assert_allclose(got.scores.numpy(), alone.scores.numpy(), atol=1e-5)


def test_scales_without_one_are_refused_by_name() -> None:
    """Poses are grouped in the scale-1 frame: a scale list without 1.0 is a clear error at every entry."""
    from typer.testing import CliRunner

    from pose.cli import app
    from pose.config import DEFAULT_MODEL, TestConfig

    est = PoseEstimator.from_config(DEFAULT_MODEL)  # shipped in the repository: runs without ../shared
    image = np.zeros((64, 48, 3), np.uint8)
    for bad in ([1.5], [2.0, 0.0, 1.0], [-1.0, 1.0]):
        with pytest.raises(ValueError, match="positive and include 1.0"):
            est.predict(image, scales=bad)
        with pytest.raises(ValueError, match="positive and include 1.0"):
            TestConfig(scales=bad)
    assert est.predict(image, scales=[1.0, 0.5]).keypoints.shape[1:] == (17, 3)  # a valid list still runs
    with pytest.raises(ValueError, match="must be positive"):
        est.forward(image, scales=[0.0])
    (raw,), _ = est.forward(image, scales=[0.5])  # raw maps need no grouping frame: any positive scale
    assert raw.heatmaps.shape[-1] < est.forward(image, scales=[1.0])[0][0].heatmaps.shape[-1]
    result = CliRunner().invoke(app, ["predict", "missing.jpg", "--scales", "1.5"])
    assert result.exit_code == 2 and "include 1.0" in result.output
