"""Poses as COCO keypoint results and as plain typed records (what the CLI writes and the service returns)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Person", "best_first", "coco_results", "frame_record", "to_people"]


def best_first(scores: Tensor) -> Tensor:
    """Indices that list poses by score, highest first: the one order of people in every output (API, CLI,
    bulk files, REST, video lines, stream). Ties keep their order; NaN scores (an ill-conditioned fit) go
    last rather than first, where a plain descending sort puts them."""
    key = torch.nan_to_num(scores.detach().float(), nan=float("-inf"))
    return torch.argsort(key, descending=True, stable=True)


@dataclass(frozen=True)
class Person:
    """One detected person in original-image pixels."""

    keypoints: list[tuple[float, float, float]]  # K x (x, y, score)
    score: float
    box: tuple[float, float, float, float]  # x, y, w, h


def to_people(
    keypoints: Tensor,
    scores: Tensor,
    boxes: Tensor,
    min_score: float | None = None,
    max_people: int | None = None,
    sort: bool = True,
) -> list[Person]:
    """One image's poses (P, K, 3), (P,), (P, 4) to records, best first when ``sort``."""
    order = best_first(scores) if sort else torch.arange(len(scores))
    if min_score is not None:
        order = order[scores[order] >= min_score]
    if max_people is not None:
        order = order[:max_people]
    kp, sc, bx = keypoints[order].tolist(), scores[order].tolist(), boxes[order].tolist()
    return [Person([tuple(j) for j in k], s, tuple(b)) for k, s, b in zip(kp, sc, bx, strict=True)]


def coco_results(image_id: int, keypoints: Tensor, scores: Tensor) -> list[dict]:
    """COCO results entries: flat ``[x, y, v] * K`` where v is the joint score, as the authors submit."""
    flat = keypoints.flatten(1).tolist()
    return [
        {"image_id": image_id, "category_id": 1, "keypoints": k, "score": s}
        for k, s in zip(flat, scores.tolist(), strict=True)
    ]


def frame_record(
    frame: int,
    time_s: float,
    keypoints: Tensor,
    scores: Tensor,
    boxes: Tensor,
    track_ids: Tensor | None,
    names: list[str],
    max_people: int | None = None,
) -> dict:
    """One video frame's people, best first, as a JSON-ready line (``track_id`` null when untracked): the
    service streams these and the CLI writes them, so both read the same. Non-finite numbers (JSON has
    none) become 0 or the largest float32."""
    order = best_first(scores)[:max_people]
    keypoints, scores, boxes = (t[order].nan_to_num(0.0, 3.0e38, -3.0e38) for t in (keypoints, scores, boxes))
    people = to_people(keypoints, scores, boxes, sort=False)
    ids = track_ids[order].tolist() if track_ids is not None else [None] * len(people)
    return {
        "frame": frame,
        "time_s": time_s,
        "people": [
            {
                "keypoints": [
                    {"name": n, "x": x, "y": y, "score": s} for n, (x, y, s) in zip(names, p.keypoints, strict=True)
                ],
                "score": p.score,
                "bbox": list(p.box),
                "track_id": i,
            }
            for p, i in zip(people, ids, strict=True)
        ],
    }
