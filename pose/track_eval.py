"""Identity metrics of tracked poses against ground-truth tracks: IDF1 (Ristani et al., ECCV 2016 workshops).

A predicted pose and a ground-truth person are a candidate pair in a frame when their OKS reaches
``min_oks``. IDF1 then matches whole trajectories, one predicted track to at most one true track, so as to
maximize the frames on which matched tracks coincide (IDTP), and is ``2 IDTP / (true + predicted poses)``:
it drops when an identity switches, fragments or is never found, and when spurious poses are reported.

People that show too little (mostly hidden behind someone nearer, or cut by the border) are ignore
regions, as crowd regions are in COCO: they are not counted as misses, and a pose that matches one of them
and nothing else is not counted as a false positive.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from pose.data.synthetic_video import SyntheticVideo
from pose.tracking import TrackedPoses
from pose.train.rescore import keypoint_oks

__all__ = ["FrameMatches", "IdentityScores", "frame_matches", "identity_scores", "synthetic_video_scores"]


@dataclass(frozen=True)
class IdentityScores:
    """IDF1 with its parts."""

    idf1: float
    idp: float  # identity precision: IDTP / predicted poses
    idr: float  # identity recall: IDTP / true poses
    idtp: int
    num_true: int
    num_predicted: int


@dataclass
class FrameMatches:
    """One frame's counted people and their candidate pairs."""

    true_ids: np.ndarray  # (G,) ids of the counted ground-truth people
    predicted_ids: np.ndarray  # (P,) track ids of the counted predictions
    oks: np.ndarray  # (P, G)


def frame_matches(
    true_ids: np.ndarray,
    true_keypoints: np.ndarray,
    scales: np.ndarray,
    counted: np.ndarray,
    predicted_ids: np.ndarray,
    predicted_keypoints: np.ndarray,
    sigmas: Sequence[float],
    min_oks: float = 0.5,
) -> FrameMatches:
    """The counted people of one frame and their OKS.

    Args:
        true_ids: (G,) ground-truth ids; ``true_keypoints`` (G, K, 3) x, y, v; ``scales`` (G,) OKS area s^2.
        counted: (G,) bool, False for ignore regions.
        predicted_ids: (P,) track ids; ``predicted_keypoints`` (P, K, 2+) x, y.
    """
    k = len(sigmas)
    oks = keypoint_oks(
        np.asarray(predicted_keypoints, np.float64)[..., :2].reshape(len(predicted_ids), k, 2),
        np.asarray(true_keypoints, np.float64).reshape(len(true_ids), k, 3),
        np.asarray(scales, np.float64),
        np.asarray(sigmas, np.float64),
    )  # (P, G)
    counted = np.asarray(counted, bool)
    hits = oks >= min_oks
    ignored = hits[:, ~counted].any(1) & ~hits[:, counted].any(1)
    return FrameMatches(np.asarray(true_ids)[counted], np.asarray(predicted_ids)[~ignored], oks[~ignored][:, counted])


def identity_scores(frames: Sequence[FrameMatches], min_oks: float = 0.5) -> IdentityScores:
    """IDF1 over a clip's frames (see the module docstring)."""
    together: dict[tuple[int, int], int] = defaultdict(int)  # (true id, predicted id) -> frames coinciding
    num_true = num_predicted = 0
    for f in frames:
        num_true += len(f.true_ids)
        num_predicted += len(f.predicted_ids)
        for p, g in zip(*np.nonzero(f.oks >= min_oks), strict=True):
            together[int(f.true_ids[g]), int(f.predicted_ids[p])] += 1
    idtp = 0
    if together:
        true_index = {t: i for i, t in enumerate(sorted({t for t, _ in together}))}
        pred_index = {p: i for i, p in enumerate(sorted({p for _, p in together}))}
        counts = np.zeros((len(true_index), len(pred_index)), np.int64)
        for (t, p), n in together.items():
            counts[true_index[t], pred_index[p]] = n
        rows, cols = linear_sum_assignment(counts, maximize=True)
        idtp = int(counts[rows, cols].sum())
    total = num_true + num_predicted
    return IdentityScores(
        idf1=2 * idtp / total if total else 1.0,
        idp=idtp / num_predicted if num_predicted else 1.0,
        idr=idtp / num_true if num_true else 1.0,
        idtp=idtp,
        num_true=num_true,
        num_predicted=num_predicted,
    )


def synthetic_video_scores(
    video: SyntheticVideo,
    tracked: Sequence[TrackedPoses],
    sigmas: Sequence[float],
    min_oks: float = 0.5,
    min_shown: float = 0.3,
    min_visible_joints: int = 4,
) -> IdentityScores:
    """IDF1 of tracked poses on a generated clip; a person showing less than ``min_shown`` of their
    silhouette, or fewer than ``min_visible_joints`` visible joints, is an ignore region in that frame."""
    if len(tracked) != len(video.truth):
        raise ValueError(f"got {len(tracked)} tracked frames for a clip of {len(video.truth)}")
    matches = []
    for truth, people in zip(video.truth, tracked, strict=True):
        visible = (truth.keypoints[:, :, 2] == 2).sum(1)
        counted = (truth.areas >= min_shown * truth.full_areas) & (visible >= min_visible_joints)
        matches.append(
            frame_matches(
                truth.track_ids,
                truth.keypoints,
                truth.full_areas,
                counted,
                people.track_ids.numpy(),
                people.keypoints.numpy(),
                sigmas,
                min_oks,
            )
        )
    return identity_scores(matches, min_oks)
