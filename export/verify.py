"""Compare backends on the same inputs: raw-output differences and the OKS between their final poses."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from pose.config import ModelConfig
from pose.models.hrnet import PoseOutput
from pose.pipeline import BatchPipeline, Network, PoseResult
from pose.rescore import ScoringNet


@dataclass
class Comparison:
    name: str
    heatmaps_max: float
    heatmaps_mean: float
    offsets_max: float
    offsets_mean: float
    mean_oks: float  # mean over reference poses of the OKS with the candidate's pose of the same rank
    same_pose_count: bool


def pose_oks(a: Tensor, b: Tensor, sigmas: list[float]) -> np.ndarray:
    """OKS of pose a[i] with b[i] (both (P, K, 3), image pixels), area from a's bounding box."""
    xy_a, xy_b = a[..., :2].double().numpy(), b[..., :2].double().numpy()
    area = np.prod(xy_a.max(1) - xy_a.min(1), axis=-1).clip(min=1.0)  # (P,)
    d2 = ((xy_a - xy_b) ** 2).sum(-1)  # (P, K)
    k2 = (2 * np.asarray(sigmas)) ** 2
    return np.exp(-d2 / (2 * area[:, None] * k2)).mean(-1)


def compare(
    config: ModelConfig,
    reference: Network,
    candidates: dict[str, Network],
    scoring_net: ScoringNet | None,
    images: list[np.ndarray],
    inputs: Tensor,
) -> list[Comparison]:
    """Raw outputs on ``inputs`` and poses on ``images`` of each candidate against ``reference``."""
    with torch.inference_mode():
        ref_out: PoseOutput = reference(inputs)
        ref_poses, _ = BatchPipeline(config, reference, scoring_net).run(images)
        rows = []
        for name, network in candidates.items():
            out = network(inputs)
            poses, _ = BatchPipeline(config, network, scoring_net).run(images)
            dh = (out.heatmaps.cpu() - ref_out.heatmaps.cpu()).abs()
            do = (out.offsets.cpu() - ref_out.offsets.cpu()).abs()
            rows.append(
                Comparison(
                    name,
                    float(dh.max()),
                    float(dh.mean()),
                    float(do.max()),
                    float(do.mean()),
                    _mean_oks(ref_poses, poses, config.keypoints.sigmas),
                    all(len(a.scores) == len(b.scores) for a, b in zip(ref_poses, poses, strict=True)),
                )
            )
    return rows


def _mean_oks(ref: list[PoseResult], cand: list[PoseResult], sigmas: list[float]) -> float:
    values = []
    for a, b in zip(ref, cand, strict=True):
        n = min(len(a.scores), len(b.scores))
        if n:
            values.append(pose_oks(a.keypoints[:n], b.keypoints[:n], sigmas))
    return float(np.concatenate(values).mean()) if values else 1.0
