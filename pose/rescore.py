"""Pose scoring net: predicts a pose's OKS from its shape and joint scores (SPEC §4.5).

The paper ranks poses by ``net(feature) * mean joint score``. The feature, computed from the final pose in
original-image pixels, is every scoring stick's vector and length divided by the torso size (mean of
sticks 9 and 11, clamped at 1), then the joint scores: 74 values for COCO, 59 for CrowdPose.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from pose.checkpoint import CheckpointError, check_state_dict, load_state_dict_file

__all__ = ["ScoringNet", "load_scoring_net", "pose_features"]


def pose_features(keypoints: Tensor, sticks: list[tuple[int, int]]) -> Tensor:
    """Rescoring feature of each pose.

    Args:
        keypoints: Tensor[..., K, 3] (x, y, score) in original-image pixels.
        sticks: (a, b) joint pairs; the vector of a stick is ``p_a - p_b``.

    Returns:
        Tensor[..., 3 * len(sticks) + K] float32: normalized vectors (x, y interleaved), lengths, scores.
    """
    kpts = keypoints.float()
    first = torch.tensor([a for a, _ in sticks], device=kpts.device)
    second = torch.tensor([b for _, b in sticks], device=kpts.device)
    vec = kpts[..., first, :2] - kpts[..., second, :2]  # (..., E, 2)
    length = torch.linalg.vector_norm(vec, dim=-1)  # (..., E)
    norm = ((length[..., 9] + length[..., 11]) / 2).clamp(min=1.0).unsqueeze(-1)
    return torch.cat([(vec / norm.unsqueeze(-1)).flatten(-2), length / norm, kpts[..., 2]], dim=-1)


class ScoringNet(nn.Module):
    """Two hidden layers of 256 with ReLU, one output (the authors' ``PredictOKSNet``)."""

    def __init__(self, in_features: int, hidden: int = 256) -> None:
        super().__init__()
        self.l1 = nn.Linear(in_features, hidden)
        self.l2 = nn.Linear(hidden, hidden)
        self.l3 = nn.Linear(hidden, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, feature: Tensor) -> Tensor:
        """Predicted OKS, (...,); NaN predictions become 0 so a broken pose ranks last, not first."""
        out = self.l3(self.relu(self.l2(self.relu(self.l1(feature))))).squeeze(-1)
        return torch.where(out.isnan(), torch.zeros_like(out), out)


def load_scoring_net(path: str | Path, in_features: int) -> ScoringNet:
    """Load ``final_rescore_*.pth`` (or our own save) for a feature of ``in_features`` values."""
    net = ScoringNet(in_features)
    state = load_state_dict_file(path)
    try:
        check_state_dict(net, state)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err} (expected a scoring net for {in_features}-d features)") from None
    net.load_state_dict(state)
    return net.eval()
