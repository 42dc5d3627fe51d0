"""The int8 backbone against float32 on the embedded model: pose agreement per calibration method, and AP.

    python -m bench.quantized --out bench/results/int8_cpu.json

Agreement is measured on the drawn scenes of the runtimes' start-up check (8 seeded scenes at 384x512),
through the full pipeline with the model's scoring net, against the float32 path ``auto`` runs on a CPU
(ONNX Runtime, portable graph): the share of every decoded pose reproduced within 0.5 px, and of the poses
reported at the model's score threshold. The bar for using int8 is at least 98% and 100%
(:mod:`pose.runtimes.agreement`). AP is the model card's: the 300 held-out drawn scenes (``pose synth ...
--seed 2``), every pose kept, faster-coco-eval with COCO's sigmas.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any, get_args

import typer

from bench.common import environment, model_pipeline, write_report
from export.onnx_export import export_split_onnx
from export.quantize import Method, calibration_images, quantize_backbone
from pose.config import DEFAULT_MODEL, load_model_config
from pose.runtimes import RuntimeOptions, create_backend
from pose.runtimes.agreement import AGREEMENT_BAR, CHECK_SCENES, CHECK_SIZE, drawn_scenes, pose_agreement
from pose.runtimes.onnxruntime_backend import SplitOnnxBackend
from pose.runtimes.torch_backend import TorchBackend


def held_out_ap(backend: Any, folder: Path, images: int) -> dict[str, float]:
    """AP/AR of the embedded model on its held-out split (written to ``folder`` once) with ``backend``."""
    from pose.api import PoseEstimator
    from pose.data.synthetic import SceneConfig, write_dataset
    from pose.evaluation import evaluate_keypoints, predict_dataset

    annotations = folder / "annotations.json"
    if not annotations.is_file():  # as model_repo/synthetic_w16_256/reproduce.sh draws it
        scene = SceneConfig(size=(256, 256), people=(1, 4), height=(0.3, 0.9), occluder_prob=0.25)
        write_dataset(folder, images, 2, scene, progress=False)
    reference = PoseEstimator.from_config(DEFAULT_MODEL, backend="torch")
    est = PoseEstimator(reference.config, reference.model, reference.scoring_net, "cpu", backend)
    results = predict_dataset(est, annotations, folder / "images")
    kp = est.config.keypoints
    return evaluate_keypoints(annotations, results, kp.dataset, kp.sigmas)


def main(
    methods: Annotated[list[str], typer.Option(help="calibration methods to compare")] = list(get_args(Method)),  # noqa: B006, B008
    ap_method: Annotated[str, typer.Option(help="the method whose AP is measured (the shipped recipe)")] = "percentile",
    ap_images: Annotated[
        int, typer.Option(min=0, help="held-out images for AP (300: the model card's; 0: skip)")
    ] = 300,
    out: Annotated[Path | None, typer.Option(help="JSON report")] = None,
) -> None:
    cfg = load_model_config(DEFAULT_MODEL)
    threshold = cfg.test.score_threshold
    scenes = drawn_scenes(CHECK_SCENES, CHECK_SIZE)
    rows: list[dict[str, Any]] = []
    ap: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        reference = create_backend(cfg, RuntimeOptions(onnx_cache=folder / "cache"))
        want = model_pipeline(DEFAULT_MODEL, reference).run(scenes)[0]
        backbone, heads = folder / "backbone.onnx", folder / "heads.onnx"
        export_split_onnx(TorchBackend(cfg, RuntimeOptions()).model, backbone, heads, (cfg.input.size,) * 2)
        images = calibration_images()
        backends = {}
        for method in methods:
            graph = folder / f"backbone-int8-{method}.onnx"
            quantize_backbone(backbone, graph, cfg, images, method)  # type: ignore[arg-type]
            backends[method] = SplitOnnxBackend(graph, heads, "int8")
            got = model_pipeline(DEFAULT_MODEL, backends[method]).run(scenes)[0]
            every = pose_agreement(want, got)
            reported = pose_agreement([r.above(threshold) for r in want], [g.above(threshold) for g in got])
            passes = every.within_half_pixel >= AGREEMENT_BAR and reported.within_half_pixel == 1.0
            rows.append(
                {"method": method, "every_pose": every.as_dict(), "reported": reported.as_dict(), "passes": passes}
            )
            print(
                f"{method}: {100 * every.within_half_pixel:.1f}% of {every.poses} poses within 0.5 px, "
                f"{100 * reported.within_half_pixel:.1f}% of {reported.poses} reported; "
                f"equal counts on {every.scenes_with_equal_counts}/{every.scenes} scenes; passes the bar: {passes}"
            )
        if ap_images:
            for name, backend in (("float32", reference), (f"int8 ({ap_method})", backends[ap_method])):
                ap[name] = held_out_ap(backend, folder / "val", ap_images)
                print(f"AP on {ap_images} held-out scenes, {name}: {ap[name]['AP']:.4f} (AR {ap[name]['AR']:.4f})")
    write_report(
        out,
        {
            "benchmark": "quantized",
            "model": DEFAULT_MODEL.name,
            "reference": reference.report.backend,  # type: ignore[attr-defined]
            "check_scenes": [CHECK_SCENES, *CHECK_SIZE],
            "bar": {"every_pose_within_half_pixel": AGREEMENT_BAR, "reported_within_half_pixel": 1.0},
            "env": environment("cpu"),
            "rows": rows,
            "held_out_ap": ap,
        },
    )


if __name__ == "__main__":
    typer.run(main)
