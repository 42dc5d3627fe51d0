"""Keypoint AP/AR with faster-coco-eval (same numbers as pycocotools / xtcocotools), COCO and CrowdPose.

COCO: ``iouType="keypoints"`` with the annotation areas. CrowdPose: ``keypoints_crowd`` (easy / medium /
hard by crowd index), its 14 sigmas and no areas, as the CrowdPose API does.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm import tqdm

COCO_STATS = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
CROWDPOSE_STATS = ("AP", "AP50", "AP75", "AR", "AR50", "AR75", "AP_easy", "AP_medium", "AP_hard")


def evaluate_keypoints(
    annotations: str | Path,
    results: list[dict] | str | Path,
    dataset: Literal["coco", "crowdpose"],
    sigmas: list[float],
) -> dict[str, float]:
    """AP/AR of COCO-format keypoint results against ground truth, as a name -> value dict."""
    from faster_coco_eval import COCO, COCOeval_faster

    names: tuple[str, ...]

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotations))
        if isinstance(results, list) and not results:
            return dict.fromkeys(COCO_STATS if dataset == "coco" else CROWDPOSE_STATS, 0.0)
        dt = gt.loadRes(results if isinstance(results, list) else str(results))
        if dataset == "coco":
            ev = COCOeval_faster(gt, dt, "keypoints", kpt_oks_sigmas=np.asarray(sigmas), print_function=lambda *_: None)
            names = COCO_STATS
        else:
            ev = COCOeval_faster(
                gt,
                dt,
                "keypoints_crowd",
                kpt_oks_sigmas=np.asarray(sigmas),
                use_area=False,
                print_function=lambda *_: None,
            )
            names = CROWDPOSE_STATS
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: float(v) for name, v in zip(names, ev.stats, strict=False)}


def predict_dataset(estimator, annotations: str | Path, images: str | Path, **predict) -> list[dict]:  # noqa: ANN001
    """Run the full pipeline on every image of an annotation file; COCO results keyed by its image ids.

    Every pose is kept (no score threshold), as the authors evaluate: AP rewards a long ranked list."""
    from pose.results import coco_results

    info = json.loads(Path(annotations).read_text())
    results: list[dict] = []
    for entry in tqdm(info["images"], desc="images", unit="img"):
        image = estimator.read_image(Path(images) / entry["file_name"])
        poses = estimator.predict(image, min_score=0.0, **predict)
        results += coco_results(int(entry["id"]), poses.keypoints, poses.scores)
    return results
