"""The scoring feature against a hand-computed vector, and the scoring net's loading and NaN rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pose.checkpoint import CheckpointError
from pose.config import load_model_config
from pose.rescore import ScoringNet, load_scoring_net, pose_features

from .conftest import ROOT

COCO = load_model_config(ROOT / "model_repo" / "hrnet_w32_coco_512").keypoints


def test_coco_feature_of_a_small_pose_by_hand() -> None:
    """A pose on a line: joint j at (j, 2j); torso sticks 9 = (5, 11) and 11 = (6, 12) both have length
    sqrt(6^2 + 12^2) = 6 sqrt(5), so every vector is divided by 6 sqrt(5)."""
    kpts = torch.tensor([[float(j), 2.0 * j, 0.5 + j / 100] for j in range(17)])
    feat = pose_features(kpts, COCO.score_sticks)
    assert feat.shape == (74,)
    norm = 6 * np.sqrt(5)
    expected_vectors, expected_lengths = [], []
    for a, b in COCO.score_sticks:
        dx, dy = a - b, 2.0 * (a - b)
        expected_vectors += [dx / norm, dy / norm]
        expected_lengths.append(np.hypot(dx, dy) / norm)
    expected = np.array(expected_vectors + expected_lengths + [0.5 + j / 100 for j in range(17)])
    np.testing.assert_allclose(feat.numpy(), expected, rtol=1e-6)
    # First entries spelled out: stick (0, 1) = p0 - p1 = (-1, -2) / (6 sqrt 5).
    np.testing.assert_allclose(feat[:2].numpy(), [-1 / norm, -2 / norm], rtol=1e-6)


def test_tiny_torso_is_clamped_to_one() -> None:
    kpts = torch.zeros(2, 17, 3)
    kpts[:, 0, 0] = 3.0  # nose 3 px right of everything else, torso length 0
    feat = pose_features(kpts, COCO.score_sticks)
    assert feat[0, 0] == 3.0 and feat[0, 38] == 3.0  # vector x and length of stick (0, 1), divided by 1


def test_crowdpose_feature_has_59_values() -> None:
    crowd = load_model_config(ROOT / "model_repo" / "hrnet_w32_crowdpose_512").keypoints
    assert crowd.score_feature_dim == 59
    assert pose_features(torch.rand(3, 14, 3), crowd.score_sticks).shape == (3, 59)


def test_nan_prediction_scores_zero() -> None:
    net = ScoringNet(74)
    feat = torch.rand(2, 74)
    feat[1, 0] = float("nan")
    out = net(feat)
    assert torch.isfinite(out[0]) and out[1] == 0


def test_scoring_net_of_the_wrong_dataset_is_refused(tmp_path) -> None:
    path = tmp_path / "crowd_rescore.pth"
    torch.save(ScoringNet(59).state_dict(), path)
    with pytest.raises(CheckpointError, match="74-d features"):
        load_scoring_net(path, 74)
