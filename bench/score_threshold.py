"""Choosing a model's reporting threshold (``test.score_threshold``) on held-out synthetic scenes.

Renders a dev split no training or validation set contains, matches each image's poses to its people
(OKS >= 0.5, best score first, each person once), and reports precision, recall and F1 of the reported
poses per threshold, plus the best pose score the model gives images that hold nobody (uniform colours,
noise, 1-2 pixel images).

    python -m bench.score_threshold --images 100 --out bench/results/score_threshold_synthetic.json
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from bench.common import environment, write_report
from pose.api import PoseEstimator
from pose.config import DEFAULT_MODEL
from pose.data.synthetic import SceneConfig, write_dataset
from pose.train.rescore import keypoint_oks

# The scenes the embedded model was trained and validated on (its model card); seed 3 is the dev split.
SCENE = SceneConfig(people=(1, 4), height=(0.3, 0.9), occluder_prob=0.25)
THRESHOLDS = [0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5]


def _matched_scores(est: PoseEstimator, root: Path, annotations: Path) -> tuple[list[float], list[float], int]:
    info = json.loads(annotations.read_text())
    people: dict[int, list[dict]] = {}
    for ann in info["annotations"]:
        if not ann.get("iscrowd", 0) and ann.get("num_keypoints", 0) > 0:
            people.setdefault(ann["image_id"], []).append(ann)
    sigmas = np.asarray(est.config.keypoints.sigmas)
    hits, misses, total = [], [], 0
    for entry in info["images"]:
        poses = est.predict(est.read_image(root / "images" / entry["file_name"]), min_score=0.0)
        scores = poses.scores.numpy()
        gts = people.get(entry["id"], [])
        total += len(gts)
        oks = np.zeros((len(scores), 0))
        if gts:
            gt = np.asarray([a["keypoints"] for a in gts], np.float64).reshape(len(gts), -1, 3)
            areas = np.asarray([a["area"] for a in gts], np.float64)
            oks = keypoint_oks(poses.keypoints[..., :2].double().numpy(), gt, areas, sigmas)  # (P, G)
        taken: set[int] = set()
        for i in np.argsort(-scores, kind="stable"):
            free = [j for j in range(oks.shape[1]) if j not in taken and oks[i, j] >= 0.5]
            if free:
                taken.add(max(free, key=lambda j: oks[i, j]))
                hits.append(float(scores[i]))
            else:
                misses.append(float(scores[i]))
    return hits, misses, total


def _empty_images() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    images = {
        f"uniform {v} {h}x{w}": np.full((h, w, 3), v, np.uint8)
        for v in (0, 4, 8, 64, 128, 255)
        for h, w in ((256, 256), (480, 640), (2, 2), (1, 1), (1, 2))
    }
    images["noise 256x256"] = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    return images


def main(
    images: Annotated[int, typer.Option(help="dev-split images to render")] = 100,
    seed: Annotated[int, typer.Option(help="dev split seed (the model card's dev split is 3)")] = 3,
    model: Annotated[Path, typer.Option(help="model folder")] = DEFAULT_MODEL,
    out: Annotated[Path | None, typer.Option(help="JSON report")] = None,
) -> None:
    est = PoseEstimator.from_config(model)
    with tempfile.TemporaryDirectory() as tmp:
        annotations = write_dataset(Path(tmp), images, seed=seed, config=SCENE)
        hits, misses, total = _matched_scores(est, Path(tmp), annotations)
    tp, fp = np.asarray(hits), np.asarray(misses)
    rows = []
    for t in THRESHOLDS:
        kept_tp, kept_fp = int((tp >= t).sum()), int((fp >= t).sum())
        precision, recall = kept_tp / max(kept_tp + kept_fp, 1), kept_tp / max(total, 1)
        f1 = 2 * precision * recall / max(precision + recall, 1e-9)
        rows.append(
            {"threshold": t, "precision": precision, "recall": recall, "f1": f1, "false_per_image": kept_fp / images}
        )
        print(
            f"t={t:<5} precision {precision:.3f} recall {recall:.3f} F1 {f1:.3f}"
            f" false poses/image {kept_fp / images:.2f}"
        )
    empty = {}
    for name, image in _empty_images().items():
        scores = est.predict(image, min_score=0.0).scores
        empty[name] = float(scores.max()) if len(scores) else 0.0
        print(f"{name:24s} best pose score {empty[name]:.4f}")
    write_report(
        out,
        {
            "benchmark": "score_threshold",
            "model": str(model),
            "configured": est.config.test.score_threshold,
            "dev_images": images,
            "seed": seed,
            "people": total,
            "rows": rows,
            "empty_image_best_score": empty,
            "env": environment("cpu"),
        },
    )


if __name__ == "__main__":
    typer.run(main)
