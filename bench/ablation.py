"""Ablation on synthetic figures, in the spirit of the paper's Table 4: what each part of the method buys.

Variants, each trained with the same data, steps and seed (only the named part changes):
  full            heatmap-guided regression, adaptive blocks, tradeoff heatmap loss (bg 0.1)
  no_guidance     the regression head does not see the heatmaps
  no_adaptive     plain 3x3 convolutions instead of adaptive convolutions in both heads
  no_tradeoff     plain MSE on heatmaps (background weight 1)
and, on the full model, the pose score with and without the scoring net (trained on the train set).

    python -m bench.ablation --out bench/results/ablation_synthetic.json --markdown docs/training.md

Small on purpose (128x128 images, a tiny HRNet, minutes per variant on 2 CPU cores): the numbers rank the
parts on this data; they are not COCO numbers.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import yaml

from bench.common import environment, write_report

ROOT = Path(__file__).resolve().parents[1]
TABLE_MARK = "<!-- table: python -m bench.ablation --markdown docs/training.md -->"
BASE_MODEL = ROOT / "tests" / "fixtures" / "tiny_train_w8_128.yaml"
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {  # name: (architecture overrides, run overrides)
    "full": ({}, {}),
    "no_guidance": ({"heatmap_guidance": False}, {}),
    "no_adaptive": ({"adaptive_blocks": False}, {}),
    "no_tradeoff": ({}, {"bg_weight": 1.0}),
}


def make_data(root: Path, train_images: int, val_images: int) -> None:
    from pose.data.synthetic import SceneConfig, write_dataset

    # Easier scenes than the shipped model's (a tiny network, minutes of CPU): differences must show above
    # the noise of short runs.
    scene = SceneConfig(size=(128, 128), people=(1, 2), height=(0.6, 0.9), occluder_prob=0.1, wide_rotation_prob=0.0)
    for split, count, seed in (("train", train_images, 11), ("val", val_images, 12)):
        if not (root / split / "annotations.json").is_file():
            write_dataset(root / split, count, seed, scene, progress=True)


def train_variant(name: str, root: Path, epochs: int, batch_size: int) -> dict[str, Any]:
    from pose.train.config import TrainConfig
    from pose.train.loop import train

    arch_overrides, run_overrides = VARIANTS[name]
    model_cfg = yaml.safe_load(BASE_MODEL.read_text())
    model_cfg["name"] = f"ablation_{name}"
    model_cfg["architecture"].update(arch_overrides)
    model_path = root / "models" / f"{name}.yaml"
    model_path.parent.mkdir(parents=True, exist_ok=True)
    model_path.write_text(yaml.safe_dump(model_cfg, sort_keys=False))
    cfg = TrainConfig(
        model=model_path,
        train_annotations=root / "train" / "annotations.json",
        train_images=root / "train" / "images",
        val_annotations=root / "val" / "annotations.json",
        val_images=root / "val" / "images",
        output=root / "runs" / name,
        epochs=epochs,
        milestones=[int(epochs * 0.8)],
        lr=2e-3,
        batch_size=batch_size,
        workers=0,
        log_every=50,
        **run_overrides,
    )
    result = train(cfg, device="cpu", progress=False)
    stats = result.metrics[epochs - 1]
    print(f"{name:12s} AP {stats['AP']:.4f}  AR {stats['AR']:.4f}  ({result.seconds:.0f} s)", flush=True)
    return {"AP": stats["AP"], "AR": stats["AR"], "AP50": stats["AP50"], "seconds": result.seconds}


def rescoring_effect(root: Path) -> dict[str, Any]:
    """The full model's AP with the naive score and with the scoring net trained on its own train-set poses."""
    from pose.api import PoseEstimator
    from pose.evaluation import evaluate_keypoints, predict_dataset
    from pose.train.rescore import collect_rescore_data, train_scoring_net

    est = PoseEstimator.from_config(root / "models" / "full.yaml", weights=root / "runs" / "full" / "model.pth")
    features, oks = collect_rescore_data(est, root / "train" / "annotations.json", root / "train" / "images")
    est.pipeline.scoring_net = est.scoring_net = train_scoring_net(features, oks)[0]
    kp = est.config.keypoints
    out = {}
    for label, rescore in (("naive_score", False), ("scoring_net", True)):
        results = predict_dataset(est, root / "val" / "annotations.json", root / "val" / "images", rescore=rescore)
        stats = evaluate_keypoints(root / "val" / "annotations.json", results, kp.dataset, kp.sigmas)
        out[label] = {"AP": stats["AP"], "AR": stats["AR"], "AP50": stats["AP50"]}
        print(f"full, {label:11s} AP {stats['AP']:.4f}  AR {stats['AR']:.4f}", flush=True)
    return out


def markdown(report: dict[str, Any]) -> str:
    full = report["variants"]["full"]["AP"]
    lines = [
        "| variant | AP | AR | AP50 | AP vs full |",
        "|---|---|---|---|---|",
    ]
    for name, r in report["variants"].items():
        lines.append(f"| {name} | {r['AP']:.3f} | {r['AR']:.3f} | {r['AP50']:.3f} | {r['AP'] - full:+.3f} |")
    for label, r in report["rescoring"].items():
        name = f"full, {label.replace('_', ' ')}"
        lines.append(f"| {name} | {r['AP']:.3f} | {r['AR']:.3f} | {r['AP50']:.3f} | {r['AP'] - full:+.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "ablation", help="data and runs folder")
    parser.add_argument("--train-images", type=int, default=1200)
    parser.add_argument("--val-images", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ablation_synthetic.json")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    args = parser.parse_args()

    started = time.perf_counter()
    make_data(args.work, args.train_images, args.val_images)
    variants = {name: train_variant(name, args.work, args.epochs, args.batch_size) for name in args.variants}
    report = {
        "environment": environment("cpu"),
        "setup": {k: v for k, v in vars(args).items() if k in ("train_images", "val_images", "epochs", "batch_size")},
        "model": str(BASE_MODEL.relative_to(ROOT)),
        "variants": variants,
        "rescoring": rescoring_effect(args.work) if "full" in variants else {},
        "seconds": time.perf_counter() - started,
    }
    write_report(args.out, report)
    table = markdown(report)
    print(table)
    if args.markdown:
        head = args.markdown.read_text().split(TABLE_MARK)[0] if args.markdown.is_file() else ""
        args.markdown.write_text(head + TABLE_MARK + "\n" + table)


if __name__ == "__main__":
    main()
