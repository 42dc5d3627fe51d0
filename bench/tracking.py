"""Tracking quality of the embedded model on generated videos: IDF1 against the generator's ground truth.

Renders the first ``--clips`` default scenes of :mod:`pose.data.synthetic_video` (people walking across,
meeting head-on, the nearer one hiding the farther), runs the model once per frame with its default test
options, and scores the tracker's ids with a few tracker settings side by side, so the effect of each
(motion prediction, OKS against box IoU, smoothing) is measured on the same poses.

    python -m bench.tracking --clips 8 --out bench/results/tracking_synthetic.json
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from bench.common import environment, write_report
from pose.api import PoseEstimator
from pose.config import DEFAULT_MODEL
from pose.data.synthetic_video import VideoSceneConfig, render_video
from pose.track_eval import synthetic_video_scores
from pose.tracking import PoseTracker, TrackerConfig

VARIANTS = {
    "default (oks, motion)": TrackerConfig(),
    "oks, no motion": TrackerConfig(motion=False),
    "iou, motion": TrackerConfig(match="iou"),
    "oks, motion, smoothing": TrackerConfig(smoothing=True),
}


def main(
    clips: Annotated[int, typer.Option(help="default scenes to render (seeds 0..clips-1)")] = 8,
    flip: Annotated[bool | None, typer.Option(help="flip test (default: the model's)")] = None,
    model: Annotated[Path, typer.Option(help="model folder")] = DEFAULT_MODEL,
    out: Annotated[Path | None, typer.Option(help="JSON report")] = None,
) -> None:
    est = PoseEstimator.from_config(model)
    sigmas = est.config.keypoints.sigmas
    scores: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    frames = 0
    start = time.perf_counter()
    for seed in range(clips):
        clip = render_video(seed)
        poses = [p for i in range(0, len(clip.frames), 8) for p in est.predict_batch(clip.frames[i : i + 8], flip=flip)]
        frames += len(poses)
        for name, config in VARIANTS.items():
            tracked = PoseTracker(config, sigmas).update_batch(poses, clip.times)
            s = synthetic_video_scores(clip, tracked, sigmas)
            scores[name].append({"seed": seed, **asdict(s)})
        print(f"clip {seed}: " + "  ".join(f"{n} {scores[n][-1]['idf1']:.3f}" for n in VARIANTS))
    summary = {
        name: {
            "mean_idf1": float(np.mean([r["idf1"] for r in rows])),
            "min_idf1": float(np.min([r["idf1"] for r in rows])),
            "pooled_idf1": 2 * sum(r["idtp"] for r in rows) / sum(r["num_true"] + r["num_predicted"] for r in rows),
        }
        for name, rows in scores.items()
    }
    for name, row in summary.items():
        print(
            f"{name:24s} mean IDF1 {row['mean_idf1']:.3f}  worst {row['min_idf1']:.3f}  pooled {row['pooled_idf1']:.3f}"
        )
    write_report(
        out,
        {
            "benchmark": "tracking",
            "model": str(model),
            "flip": est.config.test.flip if flip is None else flip,
            "scene": asdict(VideoSceneConfig()),
            "clips": clips,
            "frames": frames,
            "seconds": time.perf_counter() - start,
            "summary": summary,
            "clips_detail": scores,
            "trackers": {name: asdict(config) for name, config in VARIANTS.items()},
            "env": environment("cpu"),
        },
    )


if __name__ == "__main__":
    typer.run(main)
