"""Ablation on synthetic figures, in the spirit of the paper's Table 4: what each part of the method buys.

Variants, each trained with the same data, steps and seed (only the named part changes):
  full            heatmap-guided regression, adaptive blocks, tradeoff heatmap loss (bg 0.1)
  no_guidance     the regression head does not see the heatmaps
  no_adaptive     plain 3x3 convolutions instead of adaptive convolutions in both heads
  no_tradeoff     plain MSE on heatmaps (background weight 1)
and, on the full model, the pose score with and without the scoring net (trained on the train set).

    python -m bench.ablation --out bench/results/ablation_synthetic.json --markdown docs/training.md

By default small (128x128 scenes, a tiny HRNet, minutes per variant on 2 CPU cores). On a GPU, run it with the
shipped model's network and data for numbers that rank the parts (tens of epochs per variant):

    python -m bench.ablation --model model_repo/synthetic_w16_256/config.yaml --data data/synthetic \
        --epochs 40 --batch-size 32 --lr 2e-3 --workers 8 --markdown docs/training.md

The numbers rank the parts on synthetic figures; they are not COCO numbers.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Setup:
    """What every variant shares: base model, data, schedule and device."""

    model: Path
    data: Path  # holds train/ and val/ (COCO JSON + images)
    work: Path  # variant configs and runs go here
    epochs: int
    batch_size: int
    lr: float
    workers: int
    device: str
    rescore_images: int | None  # train images the scoring net learns from (None: all)
    seed: int  # weights, sample order and augmentation; a second seed measures run-to-run noise
    steps_per_epoch: int | None = None


def train_variant(name: str, setup: Setup) -> dict[str, Any]:
    from pose.train.config import TrainConfig
    from pose.train.loop import train

    arch_overrides, run_overrides = VARIANTS[name]
    model_cfg = yaml.safe_load(setup.model.read_text())
    model_cfg["name"] = f"ablation_{name}"
    model_cfg["architecture"].update(arch_overrides)
    model_cfg.pop("weights", None)  # a fresh network; its scoring net comes from rescoring_effect
    model_cfg.pop("rescore_weights", None)
    model_path = setup.work / "models" / f"{name}.yaml"
    model_path.parent.mkdir(parents=True, exist_ok=True)
    model_path.write_text(yaml.safe_dump(model_cfg, sort_keys=False))
    cfg = TrainConfig(
        model=model_path,
        train_annotations=setup.data / "train" / "annotations.json",
        train_images=setup.data / "train" / "images",
        val_annotations=setup.data / "val" / "annotations.json",
        val_images=setup.data / "val" / "images",
        output=setup.work / "runs" / name,
        epochs=setup.epochs,
        milestones=[int(setup.epochs * 0.8)],
        lr=setup.lr,
        seed=setup.seed,
        batch_size=setup.batch_size,
        workers=setup.workers,
        steps_per_epoch=setup.steps_per_epoch,
        log_every=50,
        min_center_area=0,  # synthetic labels are exact: small people get a center too
        **run_overrides,
    )
    result = train(cfg, device=setup.device, progress=False)
    stats = result.metrics[setup.epochs - 1]
    print(f"{name:12s} AP {stats['AP']:.4f}  AR {stats['AR']:.4f}  ({result.seconds:.0f} s)", flush=True)
    return {"AP": stats["AP"], "AR": stats["AR"], "AP50": stats["AP50"], "seconds": result.seconds}


def rescoring_effect(setup: Setup) -> dict[str, Any]:
    """The full model's AP with the naive score and with the scoring net trained on its own train-set poses."""
    from pose.api import PoseEstimator
    from pose.evaluation import evaluate_keypoints, predict_dataset
    from pose.train.rescore import collect_rescore_data, train_scoring_net

    model, weights = setup.work / "models" / "full.yaml", setup.work / "runs" / "full" / "model.pth"
    est = PoseEstimator.from_config(model, weights=weights, device=setup.device)
    train, val = setup.data / "train", setup.data / "val"
    try:
        features, oks = collect_rescore_data(
            est, train / "annotations.json", train / "images", max_images=setup.rescore_images
        )
    except ValueError as err:  # a network too early in training to find anyone
        print(f"rescoring skipped: {err}", flush=True)
        return {"skipped": str(err)}
    scoring_net = train_scoring_net(features, oks)[0].to(setup.device)
    est.pipeline.scoring_net = est.scoring_net = scoring_net
    kp = est.config.keypoints
    out = {}
    for label, rescore in (("naive_score", False), ("scoring_net", True)):
        results = predict_dataset(est, val / "annotations.json", val / "images", rescore=rescore)
        stats = evaluate_keypoints(val / "annotations.json", results, kp.dataset, kp.sigmas)
        out[label] = {"AP": stats["AP"], "AR": stats["AR"], "AP50": stats["AP50"]}
        print(f"full, {label:11s} AP {stats['AP']:.4f}  AR {stats['AR']:.4f}", flush=True)
    return out


def _shown(path: Path) -> str:
    """Repository-relative where possible, so reports read the same on every machine."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def markdown(report: dict[str, Any]) -> str:
    full = report["variants"]["full"]["AP"]
    lines = [
        "| variant | AP | AR | AP50 | AP vs full |",
        "|---|---|---|---|---|",
    ]
    for name, r in report["variants"].items():
        lines.append(f"| {name} | {r['AP']:.3f} | {r['AR']:.3f} | {r['AP50']:.3f} | {r['AP'] - full:+.3f} |")
    for label, r in report["rescoring"].items():
        if label == "skipped":
            continue
        name = f"full, {label.replace('_', ' ')}"
        lines.append(f"| {name} | {r['AP']:.3f} | {r['AR']:.3f} | {r['AP50']:.3f} | {r['AP'] - full:+.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "ablation", help="configs and runs folder")
    parser.add_argument("--model", type=Path, default=BASE_MODEL, help="model config every variant starts from")
    parser.add_argument(
        "--data", type=Path, help="synthetic set with train/ and val/ (default: small scenes made in --work)"
    )
    parser.add_argument("--train-images", type=int, default=1200, help="when the scenes are made here")
    parser.add_argument("--val-images", type=int, default=200, help="when the scenes are made here")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--steps-per-epoch", type=int, help="cap per epoch (smoke runs)")
    parser.add_argument("--rescore-images", type=int, default=2000, help="train images for the scoring net")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0, help="training seed (the same for every variant)")
    parser.add_argument("--workers", type=int, default=0, help="data-loading processes")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ablation_synthetic.json")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    args = parser.parse_args()

    started = time.perf_counter()
    if args.data is None:
        make_data(args.work, args.train_images, args.val_images)
    setup = Setup(
        model=args.model.resolve(),
        data=(args.data or args.work).resolve(),
        work=args.work.resolve(),
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        workers=args.workers,
        device=args.device,
        steps_per_epoch=args.steps_per_epoch,
        rescore_images=args.rescore_images,
        seed=args.seed,
    )
    variants = {name: train_variant(name, setup) for name in args.variants}
    shared = ("train_images", "val_images") if args.data is None else ()
    schedule = ("epochs", "steps_per_epoch", "batch_size", "lr", "seed", "rescore_images")
    report = {
        "environment": environment(args.device),
        "setup": {
            "model": _shown(setup.model),
            "data": _shown(setup.data),
            **{k: getattr(args, k) for k in (*shared, *schedule)},
        },
        "variants": variants,
        "rescoring": rescoring_effect(setup) if "full" in variants else {},
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
