"""A batch of images of different sizes gives each image exactly what it gets alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pose.api import PoseEstimator

from .conftest import FIXTURES


def test_mixed_size_batch_equals_one_at_a_time(data_dir: Path, parity_dir: Path) -> None:
    est = PoseEstimator.from_config(FIXTURES / "tiny_coco_w8_256.yaml")
    paths = sorted((data_dir / "coco_sample" / "mmpose").glob("*.jpg")) + [data_dir / "ochuman" / "000817.jpg"]
    images = [est.read_image(p) for p in paths]
    assert len({est.pipeline.run([im], refine=False)[1].shapes[0] for im in images}) >= 3  # several input shapes
    batch, timings = est.pipeline.run(images, refine=False)
    assert len(timings.shapes) >= 3
    for image, got in zip(images, batch, strict=True):
        alone = est.predict(image, refine=False)
        assert got.keypoints.shape == alone.keypoints.shape
        np.testing.assert_allclose(got.keypoints.numpy(), alone.keypoints.numpy(), atol=1e-4)
        np.testing.assert_allclose(got.scores.numpy(), alone.scores.numpy(), atol=1e-5)
