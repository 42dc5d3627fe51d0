"""End to end on a CPU, per backend: the service's pipeline on photos, one image at a time, flip off and on.

    python -m bench.cpu_pipeline --out bench/results/cpu_pipeline.json

HRNet-W32 at 512 with seed-0 weights (speed does not depend on them) on the COCO sample photos of
``../shared/data`` (drawn scenes at 640x480 without it). Random weights find no people, so the poses are
compared on the embedded model instead: each backend's poses on drawn scenes against torch's (same
count, joints within 0.5 px), so a faster backend only counts when it gives the same poses.
The authors' pipeline was timed on the same kind of machine (2 cores, the same weights and photos) when
issue 21 was filed; those seconds per image are the reference the ratios use.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer

from bench.common import ROOT, drawn_scenes, environment, model_pipeline, pose_agreement, sample_images, write_report
from pose.config import DEFAULT_MODEL, load_model_config
from pose.models.hrnet import create_model
from pose.pipeline import BatchPipeline
from service.backends import create_backend
from service.settings import Settings

# Seconds per image of the authors' pipeline on 2 cores, W32 seed-0 weights, the 4 photos (issue 21).
AUTHORS_S_PER_IMAGE = {False: 1.98, True: 3.65}


def _seconds(pipeline: BatchPipeline, images: list[np.ndarray], flip: bool, rounds: int) -> list[float]:
    pipeline.run(images[:1], flip=flip)  # warm-up
    seconds = []
    for _ in range(rounds):
        for image in images:
            start = time.perf_counter()
            pipeline.run([image], flip=flip)
            seconds.append(time.perf_counter() - start)
    return seconds


def _embedded_model_agreement(backends: list[str], cache: Path) -> dict[str, dict[str, Any]]:
    """Each backend's poses on drawn scenes with the embedded model, against the first backend's."""
    cfg = load_model_config(DEFAULT_MODEL)
    scenes = drawn_scenes(8, (384, 512))
    results = {}
    for name in backends:
        backend = create_backend(cfg, Settings(model=DEFAULT_MODEL, backend=name, onnx_cache=cache))
        results[name] = model_pipeline(DEFAULT_MODEL, backend).run(scenes)[0]
    return {name: pose_agreement(results[backends[0]], got) for name, got in results.items()}


def main(
    model: str = "hrnet_w32_coco_512",
    backends: Annotated[list[str], typer.Option(help="service backends to compare; torch first")] = ["torch", "auto"],  # noqa: B006
    rounds: Annotated[int, typer.Option(min=1, help="passes over the photos per setting")] = 2,
    out: Annotated[Path | None, typer.Option(help="JSON report")] = None,
) -> None:
    cfg = load_model_config(ROOT / "model_repo" / model)
    images = sample_images()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "seed0.pth"
        torch.manual_seed(0)
        torch.save(create_model(cfg).state_dict(), weights)
        for name in backends:
            settings = Settings(model=ROOT / "model_repo" / model, weights=weights, backend=name, onnx_cache=Path(tmp))
            start = time.perf_counter()
            backend = create_backend(cfg, settings)
            load_s = time.perf_counter() - start
            pipeline = BatchPipeline(cfg, backend, None, "cpu")
            for flip in (False, True):
                seconds = _seconds(pipeline, images, flip, rounds)
                median = statistics.median(seconds)
                rows.append(
                    {
                        "backend": name,
                        "runtime": backend.report.backend,
                        "flip": flip,
                        "load_s": load_s,
                        "median_s_per_image": median,
                        "mean_s_per_image": statistics.fmean(seconds),
                        "vs_authors": AUTHORS_S_PER_IMAGE[flip] / median,
                    }
                )
                print(
                    f"{name} ({backend.report.backend}) flip={flip}: {median:.2f} s/img, "
                    f"{rows[-1]['vs_authors']:.2f}x the authors' {AUTHORS_S_PER_IMAGE[flip]} s"
                )
        agreement = _embedded_model_agreement(backends, Path(tmp))
    for name, numbers in agreement.items():
        print(
            f"{name}: {100 * numbers['within_half_pixel']:.1f}% of {numbers['poses']} poses as {backends[0]}'s, "
            f"equal counts on {numbers['scenes_with_equal_counts']} of {numbers['scenes']} scenes"
        )
    write_report(
        out,
        {
            "benchmark": "cpu_pipeline",
            "model": model,
            "images": [list(im.shape) for im in images],
            "authors_s_per_image": {str(k).lower(): v for k, v in AUTHORS_S_PER_IMAGE.items()},
            "env": environment("cpu"),
            "rows": rows,
            "agreement_with_first_backend": agreement,
        },
    )


if __name__ == "__main__":
    typer.run(main)
