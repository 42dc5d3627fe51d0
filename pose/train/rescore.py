"""Training data and training of the pose scoring net (SPEC §5.5): features of grouped poses and their OKS.

Run the full pipeline without rescoring on a training set, keep each image's top detections by the naive
score, and pair each detection's 74-d (COCO) feature with its best OKS against the ground truth. The net
learns to predict that OKS (MSE, Adam 1e-3, 20 epochs, batch 1024, kaiming-uniform init).

One difference from the authors' script: they append each detection once per COCO area range
(all / medium / large), so medium and large people count two or three times. Here each detection counts
once, with its OKS against the non-crowd people that have labeled keypoints (the "all" range).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from pose.rescore import ScoringNet, pose_features

__all__ = ["collect_rescore_data", "keypoint_oks", "train_scoring_net"]


def keypoint_oks(pred: np.ndarray, gt: np.ndarray, areas: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """COCO object keypoint similarity of every prediction with every ground-truth person.

    Args:
        pred: (P, K, 2) predicted x, y.
        gt: (G, K, 3) ground-truth x, y, visibility; only v > 0 joints count.
        areas: (G,) segment areas (the OKS scale s^2).
        sigmas: (K,) per-keypoint falloff.

    Returns:
        (P, G) OKS in [0, 1]; 0 for a ground truth without labeled joints.
    """
    variances = (2 * sigmas) ** 2
    d2 = ((pred[:, None, :, :2] - gt[None, :, :, :2]) ** 2).sum(-1)  # (P, G, K)
    e = d2 / variances / (areas[None, :, None] + np.spacing(1)) / 2
    visible = gt[None, :, :, 2] > 0
    count = visible.sum(-1)
    return np.where(count > 0, (np.exp(-e) * visible).sum(-1) / np.maximum(count, 1), 0.0)


def collect_rescore_data(
    estimator,  # noqa: ANN001 - pose.api.PoseEstimator (imported lazily by callers)
    annotations: str | Path,
    images: str | Path,
    flip: bool = True,
    max_detections: int = 20,
    progress: bool = True,
    max_images: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Features (N, D) and OKS targets (N,) of the top ``max_detections`` poses of every image (of the first
    ``max_images`` images, when given)."""
    info = json.loads(Path(annotations).read_text())
    people: dict[int, list[dict]] = {}
    for ann in info["annotations"]:
        if not ann.get("iscrowd", 0) and ann.get("num_keypoints", 0) > 0:
            people.setdefault(ann["image_id"], []).append(ann)
    kp = estimator.config.keypoints
    sigmas = np.asarray(kp.sigmas)
    sticks = [tuple(s) for s in kp.score_sticks]
    features, targets = [], []
    entries = info["images"][:max_images]
    for entry in tqdm(entries, desc="rescore data", unit="img", disable=not progress):
        image = estimator.read_image(Path(images) / entry["file_name"])
        poses = estimator.predict(image, flip=flip, min_score=0.0, rescore=False)
        order = torch.argsort(poses.grouping_scores, descending=True, stable=True)[:max_detections]
        if order.numel() == 0:
            continue
        keypoints = poses.keypoints[order].float().cpu()
        gts = people.get(entry["id"], [])
        if gts:
            gt = np.asarray([a["keypoints"] for a in gts], dtype=np.float64).reshape(len(gts), -1, 3)
            areas = np.asarray([a["area"] for a in gts], dtype=np.float64)
            oks = keypoint_oks(keypoints[..., :2].double().numpy(), gt, areas, sigmas).max(1)
        else:
            oks = np.zeros(len(order))
        features.append(pose_features(keypoints, sticks))
        targets.append(torch.as_tensor(oks, dtype=torch.float32))
    if not features:
        raise ValueError(f"the pipeline found no poses in {images}; nothing to train the scoring net on")
    return torch.cat(features), torch.cat(targets)


def train_scoring_net(
    features: Tensor, targets: Tensor, epochs: int = 20, batch_size: int = 1024, lr: float = 1e-3, seed: int = 0
) -> tuple[ScoringNet, list[float]]:
    """Fit the scoring net to OKS targets; returns the net (eval mode) and the mean loss of each epoch."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = ScoringNet(features.shape[1])
    for layer in (net.l1, net.l2, net.l3):
        nn.init.kaiming_uniform_(layer.weight, a=1)
        nn.init.zeros_(layer.bias)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    batch = min(batch_size, len(features))  # the authors drop the last partial batch; keep at least one
    history = []
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(features), generator=generator)
        losses = []
        for start in range(0, len(order) - batch + 1, batch):
            idx = order[start : start + batch]
            loss = nn.functional.mse_loss(net(features[idx]), targets[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        history.append(float(np.mean(losses)))
    return net.eval(), history
