"""The training loop: Adam with step decay, AMP on CUDA, DDP under torchrun, checkpoints and resume.

A run folder holds ``last.pth`` (everything needed to resume), ``model.pth`` (weights in the format
``pose predict`` and the service load), ``log.csv`` (loss every ``log_every`` steps) and ``metrics.json``
(validation AP/AR per evaluated epoch); with ``keep_epoch_weights``, ``epochs/epoch_NNN.pth`` too, the
input of ``pose average-weights``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from pose.checkpoint import save_atomic, save_checkpoint
from pose.config import ModelConfig, load_model_config
from pose.data.dataset import KeypointDataset
from pose.loss import PoseLoss
from pose.models.hrnet import create_model
from pose.train import distributed
from pose.train.config import TrainConfig
from pose.train.init import init_weights, load_pretrained

__all__ = ["TrainResult", "train", "evaluate_model", "epoch_weights_path"]

log = logging.getLogger(__name__)
LOG_FIELDS = ("epoch", "step", "global_step", "lr", "loss", "heatmap_loss", "offset_loss", "images_per_s")


@dataclass
class TrainResult:
    output: Path
    epochs_run: int
    last_loss: float
    metrics: dict[int, dict[str, float]] = field(default_factory=dict)  # epoch -> AP/AR
    seconds: float = 0.0


def evaluate_model(
    model: nn.Module, model_cfg: ModelConfig, annotations: Path, images: Path, device: torch.device
) -> dict[str, float]:
    """AP/AR of the full inference pipeline (flip and scales from the model config, no rescoring net)."""
    from pose.api import PoseEstimator
    from pose.evaluation import evaluate_keypoints, predict_dataset

    was_training = model.training
    estimator = PoseEstimator(model_cfg, model, None, device)  # type: ignore[arg-type]
    results = predict_dataset(estimator, annotations, images)
    model.train(was_training)
    return evaluate_keypoints(annotations, results, model_cfg.keypoints.dataset, model_cfg.keypoints.sigmas)


def epoch_weights_path(run: Path, epoch: int) -> Path:
    """Where ``keep_epoch_weights`` saves the weights at the end of 1-based ``epoch``."""
    return run / "epochs" / f"epoch_{epoch:03d}.pth"


def _check_finite(loss: Tensor, ctx: distributed.DistContext, epoch: int, step: int) -> None:
    """Stop every rank together on a non-finite loss (one rank raising alone would hang the others)."""
    bad = (~torch.isfinite(loss.detach())).float()
    if ctx.distributed:
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    if bad.item():
        raise FloatingPointError(f"non-finite loss at epoch {epoch} step {step} on some rank; lower the lr")


def train(cfg: TrainConfig, resume: bool = False, device: str | None = None, progress: bool = True) -> TrainResult:
    """Run (or resume) a training run; every process of a torchrun job calls this."""
    ctx = distributed.setup(device)
    try:
        return _train(cfg, ctx, resume, progress)
    finally:
        distributed.teardown(ctx)


def _train(cfg: TrainConfig, ctx: distributed.DistContext, resume: bool, progress: bool) -> TrainResult:
    started = time.perf_counter()
    model_cfg = load_model_config(cfg.model)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = create_model(model_cfg)
    init_weights(model)
    if cfg.init_weights is not None:
        load_pretrained(model, cfg.init_weights)
    model.to(ctx.device)
    net: nn.Module = model
    if ctx.distributed:
        net = DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)

    dataset = KeypointDataset(
        cfg.train_annotations,
        cfg.train_images,
        model_cfg,
        train=True,
        seed=cfg.seed,
        bg_weight=cfg.bg_weight,
        min_center_area=cfg.min_center_area,
        keep_empty=cfg.keep_empty_images,
    )
    shuffle = torch.Generator()  # reseeded every epoch, so a resumed run sees the same order
    sampler: DistributedSampler[int] | None = (
        DistributedSampler(dataset, shuffle=True, seed=cfg.seed) if ctx.distributed else None
    )
    loader = DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=cfg.workers,
        pin_memory=ctx.device.type == "cuda",
        drop_last=len(dataset) >= cfg.batch_size * ctx.world_size,
        persistent_workers=cfg.workers > 0,
        generator=shuffle,
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, cfg.milestones, cfg.gamma)
    use_amp = cfg.amp and ctx.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    criterion = PoseLoss(cfg.heatmap_factor, cfg.offset_factor)

    out = cfg.output
    last_path, log_path, metrics_path = out / "last.pth", out / "log.csv", out / "metrics.json"
    start_epoch, global_step = 0, 0
    metrics: dict[int, dict[str, float]] = {}
    if resume and last_path.is_file():
        state = torch.load(last_path, map_location=ctx.device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        # The config wins: a resumed run may be extended or rescheduled, so the rate is the new schedule's.
        scheduler.milestones = Counter(cfg.milestones)
        drops = sum(1 for m in cfg.milestones if m <= scheduler.last_epoch)
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * cfg.gamma**drops
        if state["scaler"]:  # empty when the run was saved without AMP
            scaler.load_state_dict(state["scaler"])
        start_epoch, global_step = state["epoch"] + 1, state["global_step"]
        metrics = {int(k): v for k, v in state.get("metrics", {}).items()}
        if ctx.is_main:
            log.info("resuming %s after epoch %d", out, state["epoch"])
    elif resume and ctx.is_main:
        log.info("nothing to resume in %s; starting fresh", out)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if start_epoch == 0:
            log_path.write_text(",".join(LOG_FIELDS) + "\n")
        elif log_path.is_file():  # drop rows of an epoch that was interrupted after the checkpoint
            lines = log_path.read_text().splitlines(keepends=True)
            kept = [line for line in lines[1:] if int(line.split(",")[2]) <= global_step]
            log_path.write_text("".join(lines[:1] + kept))
        (out / "train_config.json").write_text(cfg.model_dump_json(indent=2))  # the config of the latest start

    steps = len(loader) if cfg.steps_per_epoch is None else min(cfg.steps_per_epoch, len(loader))
    last_loss = math.nan
    for epoch in range(start_epoch, cfg.epochs):
        dataset.set_epoch(epoch)
        shuffle.manual_seed(cfg.seed * 100_003 + epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)
        net.train()
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not (progress and ctx.is_main))
        tick, seen = time.perf_counter(), 0
        for step, batch in enumerate(loader):
            if step >= steps:
                break
            batch = {k: v.to(ctx.device, non_blocking=True) for k, v in batch.items() if torch.is_tensor(v)}
            with torch.autocast(ctx.device.type, dtype=torch.float16, enabled=use_amp):
                pred = net(batch["image"])
            branches = pred.heatmap_branches if pred.heatmap_branches is not None else pred.heatmaps
            total, heat, off = criterion(
                branches.float(),
                pred.offsets.float(),
                batch["heatmaps"],
                batch["heatmap_weight"],
                batch["offsets"],
                batch["offset_weight"],
                None if pred.heatmaps_2x is None else pred.heatmaps_2x.float(),
                batch.get("heatmaps_2x"),
                batch.get("heatmap_weight_2x"),
            )
            if not use_amp:  # with AMP the scaler skips non-finite steps itself
                _check_finite(total, ctx, epoch, step)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            scaler.step(optimizer)
            scaler.update()
            global_step += 1
            seen += batch["image"].shape[0] * ctx.world_size
            bar.update(1)
            if ctx.is_main and (global_step % cfg.log_every == 0 or step == steps - 1):  # the only host syncs
                last_loss = total.item()
                bar.set_postfix(loss=f"{last_loss:.3e}", heat=f"{heat.item():.3e}", off=f"{off.item():.3e}")
                rate = seen / max(time.perf_counter() - tick, 1e-9)
                row = [epoch, step, global_step, optimizer.param_groups[0]["lr"], last_loss, heat.item(), off.item()]
                with log_path.open("a", newline="") as f:
                    csv.writer(f).writerow([*row, round(rate, 2)])
        bar.close()
        scheduler.step()

        evaluate = cfg.val_annotations is not None and (
            epoch == cfg.epochs - 1 or (cfg.validate_every and (epoch + 1) % cfg.validate_every == 0)
        )
        if evaluate and ctx.is_main:
            assert cfg.val_annotations is not None and cfg.val_images is not None
            metrics[epoch] = evaluate_model(model, model_cfg, cfg.val_annotations, cfg.val_images, ctx.device)
            log.info("epoch %d: AP %.4f AR %.4f", epoch + 1, metrics[epoch]["AP"], metrics[epoch]["AR"])
            metrics_path.write_text(json.dumps({str(k): v for k, v in metrics.items()}, indent=2))
        if ctx.is_main:
            save_checkpoint(model, out / "model.pth", model_cfg.name, epoch=epoch, global_step=global_step)
            if cfg.keep_epoch_weights:
                save_checkpoint(
                    model, epoch_weights_path(out, epoch + 1), model_cfg.name, epoch=epoch, global_step=global_step
                )
            save_atomic(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "epoch": epoch,
                    "global_step": global_step,
                    "metrics": {str(k): v for k, v in metrics.items()},
                    "config": cfg.model_dump(mode="json"),
                },
                last_path,
            )
        ctx.barrier()
    return TrainResult(out, cfg.epochs - start_epoch, last_loss, metrics, time.perf_counter() - started)
