"""End to end on a CPU, per backend: the service's pipeline on photos, one image at a time, flip off and on.

    python -m bench.cpu_pipeline --out bench/results/cpu_pipeline.json

HRNet-W32 at 512 with seed-0 weights (speed does not depend on them) on the COCO sample photos of
``../shared/data`` (drawn scenes at 640x480 without it). Random weights find no people, so the poses are
compared on the embedded model instead: each backend's poses on drawn scenes against torch's (same
count, joints within 0.5 px), so a faster backend only counts when it gives the same poses.

Rows: the runtimes ``auto`` chooses among (torch, ONNX Runtime on the portable graph), the library API
as a user calls it (``PoseEstimator.from_config(...).predict``, default backend), then the same
float32 network split into a backbone graph and a heads graph, and the int8 backbone with float32 heads
(``precision="int8"``, timed here without its start-up check: random weights give no poses to check). The
split rows time the backbone and the heads apart.

The authors' seconds per image are a constant: their pipeline timed on another 2-core machine when
issue 21 was filed, not in this run. Ratios against them compare across machines; the ratios against this
project's float32 path (``auto``) compare runs of the same process, seconds apart.

The report also holds the arithmetic floor: the network's floating-point work per photo (counted by
torch) over this machine's measured float32 peak (the best of a large convolution and a large matrix
product), i.e. the fastest any float32 runtime could run the forward here, and so the best ratio to the
authors that float32 inference can reach on this machine.
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
from pose.models.fold import fold_batch_norms
from pose.models.hrnet import create_model
from pose.pipeline import BatchPipeline
from pose.preprocess import plan_transform
from pose.runtimes import RuntimeOptions, create_backend
from pose.runtimes.graphs import cached_int8_graphs
from pose.runtimes.onnxruntime_backend import SplitOnnxBackend
from pose.runtimes.torch_backend import TorchBackend

# Seconds per image of the authors' pipeline on 2 cores, W32 seed-0 weights, the 4 photos: measured on
# another machine for issue 21, a constant here (not timed in this run).
AUTHORS_S_PER_IMAGE = {False: 1.98, True: 3.65}
SPLIT_ROWS = ("onnx-split-float32", "int8")  # the float32 graph in two sessions, and the int8 backbone


def _seconds(pipeline: Any, images: list[np.ndarray], flip: bool, rounds: int) -> list[float]:
    seconds = []  # the caller warms up first
    for _ in range(rounds):
        for image in images:
            start = time.perf_counter()
            pipeline.run([image], flip=flip)
            seconds.append(time.perf_counter() - start)
    return seconds


def network_gflop(model: torch.nn.Module, images: list[np.ndarray], input_size: int) -> float:
    """Mean floating-point work of one forward per image, in GFLOP (a multiply-add counts 2), as torch counts
    it (convolutions and matrix products; the bilinear sampling and elementwise ops are not counted, so
    this is a lower bound)."""
    from torch.utils.flop_counter import FlopCounterMode

    shapes = [plan_transform(im.shape[1], im.shape[0], input_size).input_size for im in images]  # (W, H)
    per_shape: dict[tuple[int, int], float] = {}
    for w, h in set(shapes):
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, h, w))
        per_shape[w, h] = counter.get_total_flops() / 1e9
    return statistics.fmean(per_shape[shape] for shape in shapes)


def float32_peak_gflops(repeat: int = 5) -> float:
    """The best float32 rate measured here: a 256-channel 3x3 convolution on a 128x192 map (oneDNN,
    channels-last) and a 256x2304x24576 matrix product, each the fastest of ``repeat`` runs."""
    x = torch.randn(1, 256, 128, 192).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(256, 256, 3, 3)
    a, b = torch.randn(256, 2304), torch.randn(2304, 128 * 192)
    work = 2 * 256 * 2304 * 128 * 192  # the same for both
    best = 0.0
    with torch.inference_mode():
        for op in (lambda: torch.nn.functional.conv2d(x, weight, padding=1), lambda: a @ b):
            op()
            for _ in range(repeat):
                start = time.perf_counter()
                op()
                best = max(best, work / (time.perf_counter() - start) / 1e9)
    return best


def arithmetic_floor(cfg: Any, images: list[np.ndarray]) -> dict[str, Any]:
    """Seconds per image the forward(s) alone would take at the measured float32 peak, and the best ratio
    to the authors that this allows (pre- and post-processing counted as free)."""
    model = create_model(cfg).eval()
    fold_batch_norms(model)
    gflop = network_gflop(model, images, cfg.input.size)
    peak = float32_peak_gflops()
    floor = {flip: (2 if flip else 1) * gflop / peak for flip in (False, True)}
    return {
        "network_gflop_per_image": gflop,
        "float32_peak_gflops": peak,
        "network_floor_s_per_image": {str(f).lower(): s for f, s in floor.items()},
        "best_possible_vs_authors": {str(f).lower(): AUTHORS_S_PER_IMAGE[f] / s for f, s in floor.items()},
    }


def _split_backend(name: str, cfg: Any, options: RuntimeOptions) -> SplitOnnxBackend:
    """The float32 network as backbone and heads graphs, or the int8 backbone with the float32 heads."""
    int8, heads = cached_int8_graphs(cfg, options, lambda: TorchBackend(cfg, options).model)
    if name == "int8":
        return SplitOnnxBackend(int8, heads, "int8 backbone (float32 heads)")
    return SplitOnnxBackend(next(int8.parent.glob(f"backbone-torch{torch.__version__}.onnx")), heads)


def _backend(name: str, cfg: Any, options: RuntimeOptions) -> Any:
    return _split_backend(name, cfg, options) if name in SPLIT_ROWS else create_backend(cfg, options)


class _ApiPipeline:
    """``PoseEstimator.from_config`` with its defaults, timed through ``predict``: what a library user gets."""

    def __init__(self, cfg: Any, options: RuntimeOptions) -> None:
        from pose.api import PoseEstimator

        self.est = PoseEstimator.from_config(cfg, weights=options.weights, onnx_cache=options.onnx_cache)
        self.backend = self.est.backend

    def run(self, images: list[np.ndarray], flip: bool) -> Any:
        return self.est.predict_batch(images, flip=flip)


def _embedded_model_agreement(backends: list[str], cache: Path) -> dict[str, dict[str, Any]]:
    """Each backend's poses on drawn scenes with the embedded model, against the first backend's: every
    decoded pose, and those reported at the model's score threshold."""
    cfg = load_model_config(DEFAULT_MODEL)
    threshold = cfg.test.score_threshold
    scenes = drawn_scenes(8, (384, 512))
    results = {}
    for name in backends:
        if name == "api":  # the API's backend is auto's, compared above
            continue
        options = RuntimeOptions(backend="auto" if name in SPLIT_ROWS else name, onnx_cache=cache)  # type: ignore[arg-type]
        results[name] = model_pipeline(DEFAULT_MODEL, _backend(name, cfg, options)).run(scenes)[0]
    first = results[backends[0]]
    return {
        name: {
            **pose_agreement(first, got),
            "reported": pose_agreement([r.above(threshold) for r in first], [g.above(threshold) for g in got]),
        }
        for name, got in results.items()
    }


def main(
    model: str = "hrnet_w32_coco_512",
    backends: Annotated[list[str], typer.Option(help="backends to compare; torch first, then auto")] = [  # noqa: B006
        "torch",
        "auto",
        "api",
        *SPLIT_ROWS,
    ],
    rounds: Annotated[int, typer.Option(min=1, help="passes over the photos per setting")] = 2,
    cache: Annotated[
        Path | None, typer.Option(help="keep exported and quantized graphs here across runs (default: a temporary one)")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="JSON report")] = None,
) -> None:
    cfg = load_model_config(ROOT / "model_repo" / model)
    images = sample_images()
    load_start = _loadavg()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        graphs = cache or Path(tmp)
        weights = graphs / "seed0.pth"  # the same bytes every run, so a kept cache finds its graphs
        if not weights.is_file():
            graphs.mkdir(parents=True, exist_ok=True)
            torch.manual_seed(0)
            torch.save(create_model(cfg).state_dict(), weights)
        for name in backends:
            backend_name = "auto" if name in (*SPLIT_ROWS, "api") else name
            options = RuntimeOptions(backend=backend_name, weights=weights, onnx_cache=graphs)  # type: ignore[arg-type]
            start = time.perf_counter()
            pipeline: Any = _ApiPipeline(cfg, options) if name == "api" else None
            backend = pipeline.backend if pipeline is not None else _backend(name, cfg, options)
            load_s = time.perf_counter() - start
            pipeline = pipeline or BatchPipeline(cfg, backend, None, "cpu")
            for flip in (False, True):
                pipeline.run(images[:1], flip=flip)  # warm-up
                split = getattr(backend, "seconds", None)
                if split is not None:
                    split.update(backbone=0.0, heads=0.0)
                seconds = _seconds(pipeline, images, flip, rounds)
                median = statistics.median(seconds)
                row: dict[str, Any] = {
                    "backend": name,
                    "runtime": backend.report.backend,
                    "precision": backend.report.precision,
                    "flip": flip,
                    "load_s": load_s,
                    "median_s_per_image": median,
                    "mean_s_per_image": statistics.fmean(seconds),
                    "vs_authors": AUTHORS_S_PER_IMAGE[flip] / median,
                }
                if split is not None:  # network seconds per image, each part
                    row["network_s_per_image"] = {part: t / len(seconds) for part, t in split.items()}
                same_run = next((r for r in rows if r["backend"] == "auto" and r["flip"] == flip), None)
                if same_run is not None:
                    row["vs_float32_auto_same_run"] = same_run["median_s_per_image"] / median
                rows.append(row)
                parts = row.get("network_s_per_image")
                print(
                    f"{name} ({backend.report.backend}, {backend.report.precision}) flip={flip}: {median:.2f} s/img, "
                    f"{row['vs_authors']:.2f}x the authors' constant {AUTHORS_S_PER_IMAGE[flip]} s"
                    + (f", {row['vs_float32_auto_same_run']:.2f}x auto" if same_run is not None else "")
                    + (f"; network: backbone {parts['backbone']:.2f} s, heads {parts['heads']:.2f} s" if parts else "")
                )
        agreement = _embedded_model_agreement(backends, graphs)
    floor = arithmetic_floor(cfg, images)
    print(
        f"arithmetic floor: {floor['network_gflop_per_image']:.0f} GFLOP per forward at "
        f"{floor['float32_peak_gflops']:.0f} GFLOP/s = {floor['network_floor_s_per_image']['false']:.2f} s "
        f"({floor['network_floor_s_per_image']['true']:.2f} s with flip): at best "
        f"{floor['best_possible_vs_authors']['false']:.2f}x / {floor['best_possible_vs_authors']['true']:.2f}x "
        "the authors in float32"
    )
    for name, numbers in agreement.items():
        reported = numbers["reported"]
        print(
            f"{name}: {100 * numbers['within_half_pixel']:.1f}% of {numbers['poses']} poses as {backends[0]}'s, "
            f"equal counts on {numbers['scenes_with_equal_counts']} of {numbers['scenes']} scenes; "
            f"{100 * reported['within_half_pixel']:.1f}% of {reported['poses']} reported"
        )
    write_report(
        out,
        {
            "benchmark": "cpu_pipeline",
            "model": model,
            "images": [list(im.shape) for im in images],
            "authors_s_per_image": {str(k).lower(): v for k, v in AUTHORS_S_PER_IMAGE.items()},
            "authors_note": "a constant measured on another machine for issue 21, not timed in this run",
            "loadavg": {"start": load_start, "end": _loadavg()},
            "env": environment("cpu"),
            "rows": rows,
            "agreement_with_first_backend": agreement,
            "arithmetic_floor": floor,
        },
    )


def _loadavg() -> list[float] | None:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


if __name__ == "__main__":
    typer.run(main)
