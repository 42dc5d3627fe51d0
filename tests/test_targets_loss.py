"""Targets and loss against hand-computed values (SPEC §5.2-5.3)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pose.loss import PoseLoss, heatmap_loss, offset_loss
from pose.targets import heatmap_targets, offset_targets

K = 17


def person(joint_xy: tuple[float, float], center_xy: tuple[float, float], k: int = K) -> np.ndarray:
    p = np.zeros((k + 1, 3), np.float32)
    p[0] = [*joint_xy, 2]
    p[k] = [*center_xy, 1]
    return p


def test_gaussian_peak_neighbours_and_window() -> None:
    heat, weight = heatmap_targets(person((10, 12), (30, 30))[None], 64)
    assert heat[0, 12, 10] == 1.0
    assert heat[0, 12, 11] == pytest.approx(math.exp(-1 / 8))  # sigma 2: exp(-d^2 / 8)
    assert heat[0, 14, 12] == pytest.approx(math.exp(-8 / 8))
    # Window [floor(x - 3s - 1), ceil(x + 3s + 2)) = [3, 18) in x and [5, 20) in y; zero beyond.
    assert heat[0, 12, 17] > 0 and heat[0, 12, 18] == 0 and heat[0, 12, 3] > 0 and heat[0, 12, 2] == 0
    assert (
        weight[5:20, 3:18].min() == 1.0 and weight[12, 18] == pytest.approx(0.1) and weight[4, 10] == pytest.approx(0.1)
    )
    # Center (index 17): sigma 4, window [30 - 13, 30 + 14) = [17, 44).
    assert heat[K, 30, 32] == pytest.approx(math.exp(-4 / 32))
    assert weight[17, 30] == 1.0 and weight[16, 30] == pytest.approx(0.1) and weight[30, 43] == 1.0


def test_crowdpose_center_gets_sigma_2_like_the_authors_code() -> None:
    heat, _ = heatmap_targets(person((5, 5), (30, 30), k=14)[None], 64)
    assert heat[14, 30, 32] == pytest.approx(math.exp(-4 / 8))  # index 14 < 17: the keypoint sigma


def test_invisible_and_outside_joints_are_not_drawn_and_people_combine_by_max() -> None:
    a = person((10, 10), (40, 40))
    b = person((11, 10), (50, 50))
    hidden = person((30, 30), (-5, 40))
    hidden[0, 2] = 0
    heat, _ = heatmap_targets(np.stack([a, b, hidden]), 64)
    assert heat[0, 10, 10] == 1.0 and heat[0, 10, 11] == 1.0 and heat[0, 30, 30] == 0
    assert heat[K].max() == 1.0 and heat[K, 40, 0] == 0  # the outside center is skipped


def test_offsets_cover_an_8x8_square_at_the_integer_center() -> None:
    off, w = offset_targets(person((10.5, 12.25), (30.7, 20.2))[None], np.array([400.0]), 64)
    rows, cols = np.nonzero(w[0])
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (16, 23, 26, 33)  # [int(c) - 4, int(c) + 4)
    assert off[0, 20, 30] == pytest.approx(30 - 10.5) and off[1, 20, 30] == pytest.approx(20 - 12.25)
    assert w[0, 20, 30] == w[1, 20, 30] == pytest.approx(1 / 20)  # 1 / sqrt(area)
    assert not w[2:].any()  # other joints are invisible


def test_the_smaller_person_wins_a_shared_pixel() -> None:
    big = person((5, 5), (20, 20))
    small = person((40, 40), (22, 20))
    off, w = offset_targets(np.stack([big, small]), np.array([900.0, 100.0]), 64)
    assert off[0, 20, 20] == 20 - 40 and w[0, 20, 20] == pytest.approx(0.1)  # small (area 100) overwrote big
    off2, _ = offset_targets(np.stack([small, big]), np.array([100.0, 900.0]), 64)
    assert off2[0, 20, 20] == 20 - 40  # and big does not overwrite small
    assert off2[0, 20, 17] == 17 - 5  # big keeps its own pixels


def test_heatmap_loss_by_hand() -> None:
    pred = torch.zeros(2, 1, 1, 2)
    target = torch.tensor([[[[1.0, 0.0]]], [[[0.0, 0.0]]]])
    weight = torch.tensor([[[1.0, 0.1]], [[0.1, 0.1]]])
    pred[0, 0, 0, 1] = 0.5
    # sample 0: ((1)^2 * 1 + (0.5)^2 * 0.1) / 2 = 0.5125; sample 1: 0 -> batch mean 0.25625
    assert heatmap_loss(pred, target, weight).item() == pytest.approx(0.25625)


def test_offset_loss_by_hand() -> None:
    pred = torch.tensor([[[[0.05, 2.0, 7.0]]]])
    target = torch.zeros(1, 1, 1, 3)
    weight = torch.tensor([[[[0.5, 0.25, 0.0]]]])
    beta = 1 / 9
    expected = (0.5 * 0.05**2 / beta * 0.5 + (2.0 - 0.5 * beta) * 0.25) / 2  # two supervised entries
    assert offset_loss(pred, target, weight).item() == pytest.approx(expected)
    total, heat, off = PoseLoss()(
        torch.zeros(1, 1, 1, 3), pred, torch.zeros(1, 1, 1, 3), torch.ones(1, 1, 3), target, weight
    )
    assert (
        heat.item() == 0 and off.item() == pytest.approx(0.01 * expected) and total.item() == pytest.approx(off.item())
    )


def test_higher_hrnet_loss_takes_each_branch_and_adds_the_2x_head_by_hand() -> None:
    # Two channels (K + 1 = 2) on a 1x2 grid, three branches that differ; one sample.
    target = torch.tensor([[[[1.0, 0.0]], [[0.0, 0.5]]]])  # (1, 2, 1, 2)
    weight = torch.tensor([[[[1.0, 0.1]]]])
    branches = torch.cat([target, target + 0.5, target - 1.0], dim=1)  # errors 0, 0.5, -1 everywhere
    # per branch: mean over 2 ch x 2 px of err^2 * w = err^2 * (1 + 0.1 + 1 + 0.1) / 4 = 0.55 err^2
    stage0 = (0 + 0.25 + 1.0) * 0.55 / 3
    pred_2x = torch.tensor([[[[0.0, 0.0, 0.0, 2.0]]]])  # (1, 1, 1, 4): the 2x head, K = 1 channel
    target_2x = torch.tensor([[[[1.0, 0.0, 0.0, 0.0]]]])
    weight_2x = torch.tensor([[[[1.0, 0.025, 0.025, 0.025]]]])
    stage1 = (1.0 * 1.0 + 4.0 * 0.025) / 4
    zeros = torch.zeros(1, 2, 1, 2)
    total, heat, off = PoseLoss()(branches, zeros, target, weight, zeros, zeros, pred_2x, target_2x, weight_2x)
    assert heat.item() == pytest.approx(stage0 + stage1) and off.item() == 0 and total.item() == heat.item()
    _, heat4x, _ = PoseLoss()(branches, zeros, target, weight, zeros, zeros)
    assert heat4x.item() == pytest.approx(stage0)
    with pytest.raises(ValueError, match="2x"):
        PoseLoss()(branches, zeros, target, weight, zeros, zeros, pred_2x)
    with pytest.raises(ValueError, match="channels"):
        PoseLoss()(branches[:, :3], zeros, target, weight, zeros, zeros)
