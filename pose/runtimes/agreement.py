"""Whether two backends give the same poses: the test a faster or lower-precision runtime must pass before it
is used in place of the reference.

Raw outputs are compared on a seeded input where rounding is all that may differ (ONNX Runtime against
torch); poses are compared on drawn scenes where precision itself changes (int8 against float32): each of
the reference's poses must have a pose of the other run whose median joint is within half a pixel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from pose.pipeline import PoseResult
from pose.runtimes.report import Backend

__all__ = [
    "AGREEMENT_BAR",
    "PoseAgreement",
    "check_outputs_agree",
    "check_poses_agree",
    "drawn_scenes",
    "match_poses",
    "pose_agreement",
]

AGREEMENT_BAR = 0.98  # of every decoded pose within 0.5 px; every reported pose must agree
CHECK_SCENES = 8
CHECK_SIZE = (384, 512)


def drawn_scenes(n: int, size: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    """``n`` seeded synthetic scenes (RGB) of 2-6 drawn people, the embedded model's kind of image."""
    from pose.data.synthetic import SceneConfig, render_scene

    rng = np.random.default_rng(seed)
    return [render_scene(rng, SceneConfig(size=size, people=(2, 6)))[0][..., ::-1].copy() for _ in range(n)]


def match_poses(reference: PoseResult, other: PoseResult, tolerance_px: float = 0.5) -> tuple[int, int]:
    """Poses of ``reference`` with a pose of ``other`` whose median joint distance is under ``tolerance_px``,
    and the reference's pose count."""
    if len(reference.keypoints) == 0 or len(other.keypoints) == 0:
        return 0, len(reference.keypoints)
    a = reference.keypoints[:, None, :, :2]
    b = other.keypoints[None, :, :, :2]
    distance = (a - b).norm(dim=-1).median(dim=-1).values  # (P_ref, P_other)
    return int((distance.min(dim=1).values < tolerance_px).sum()), len(reference.keypoints)


@dataclass
class PoseAgreement:
    poses: int  # the reference's poses, over all images
    within_half_pixel: float  # the share of them the other run reproduces
    scenes_with_equal_counts: int
    scenes: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def pose_agreement(reference: Sequence[PoseResult], other: Sequence[PoseResult]) -> PoseAgreement:
    """How many of the reference's poses the other run reproduces within 0.5 px, image by image, and on how
    many images the two give the same number of poses."""
    matched = [match_poses(r, g) for r, g in zip(reference, other, strict=True)]
    poses = sum(m[1] for m in matched)
    return PoseAgreement(
        poses=poses,
        within_half_pixel=sum(m[0] for m in matched) / max(1, poses),
        scenes_with_equal_counts=sum(len(r.scores) == len(g.scores) for r, g in zip(reference, other, strict=True)),
        scenes=len(reference),
    )


def check_outputs_agree(candidate: Backend, reference: Backend, tolerance: float = 1e-3) -> None:
    """Raise unless both give the same heatmaps and offsets on a seeded input (relative to their scale)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 128, 192, generator=g)
    with torch.inference_mode():
        want, got = reference(x), candidate(x)
    for name, a, b in (("heatmaps", got.heatmaps, want.heatmaps), ("offsets", got.offsets, want.offsets)):
        error = float((a.float().cpu() - b.float().cpu()).abs().max())
        if not error <= tolerance * max(1.0, float(b.abs().max())):
            raise RuntimeError(f"{name} differ from the torch network by {error:.3g}")


def check_poses_agree(
    candidate: Sequence[PoseResult], reference: Sequence[PoseResult], score_threshold: float
) -> tuple[PoseAgreement, PoseAgreement]:
    """Raise unless the candidate reproduces at least :data:`AGREEMENT_BAR` of the reference's decoded poses
    within 0.5 px and every pose the reference reports (scoring at least ``score_threshold``), with the same
    reported count on every image; returns both agreements."""
    every = pose_agreement(reference, candidate)
    reported = pose_agreement(
        [r.above(score_threshold) for r in reference], [c.above(score_threshold) for c in candidate]
    )
    if (
        every.within_half_pixel < AGREEMENT_BAR
        or reported.within_half_pixel < 1
        or reported.scenes_with_equal_counts < reported.scenes
    ):
        raise RuntimeError(
            f"its poses differ from float32's: {100 * every.within_half_pixel:.1f}% of {every.poses} within 0.5 px "
            f"(at least {100 * AGREEMENT_BAR:.0f}% needed), {100 * reported.within_half_pixel:.1f}% of the "
            f"{reported.poses} reported (100% needed), equal reported counts on {reported.scenes_with_equal_counts} "
            f"of {reported.scenes} drawn scenes"
        )
    return every, reported
