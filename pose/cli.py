"""``pose`` command line: run a model from ``model_repo/`` on images, write COCO results and overlays."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer
from tqdm import tqdm

from pose.cli_errors import WEIGHTS_HINT, CommandLine, UserError
from pose.config import DEFAULT_MODEL, check_scales
from pose.runtimes.options import BackendName, Precision
from pose.video import VIDEO_SUFFIXES

if TYPE_CHECKING:
    from pose.api import PoseEstimator

app = CommandLine(help="Bottom-up multi-person pose estimation.")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}

ModelOpt = Annotated[Path, typer.Option("--model", "-m", help="model_repo/<name> folder or a config.yaml")]
DefaultModelOpt = Annotated[
    Path,
    typer.Option(
        "--model", "-m", help="model_repo/<name> folder or config.yaml (default: the embedded one)", show_default=False
    ),
]
WeightsOpt = Annotated[Path | None, typer.Option(help="checkpoint (default: the config's weights)")]
DeviceOpt = Annotated[str, typer.Option(help="torch device, e.g. cpu or cuda")]
BackendOpt = Annotated[
    BackendName,
    typer.Option(
        help="network runtime; auto: torch on CUDA, on a CPU ONNX Runtime once it matches torch (the graph is "
        "exported once into ~/.cache/pose/onnx)"
    ),
]
PrecisionOpt = Annotated[
    Precision,
    typer.Option(help="int8: the backbone quantized on a CPU, used only once its poses match float32's"),
]


def _scales(value: list[float] | None) -> list[float] | None:
    if not value:
        return None
    try:
        return check_scales(value)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None


ScalesOpt = Annotated[
    list[float] | None,
    typer.Option(help="test scales, 1 among them, e.g. --scales 2 --scales 1 --scales 0.5", callback=_scales),
]


def _media(inputs: list[Path]) -> tuple[list[Path], list[Path]]:
    """Images and videos among the inputs (folders searched for both); videos are told by their suffix."""
    found: list[Path] = []
    for path in inputs:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)
        elif path.is_file():
            found.append(path)
        else:
            raise UserError(f"{path} does not exist; pass image or video files, or folders of them")
    if not found:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES | VIDEO_SUFFIXES))
        raise UserError(f"no images or videos ({suffixes}) in {', '.join(map(str, inputs))}")
    videos = [p for p in found if p.suffix.lower() in VIDEO_SUFFIXES]
    return [p for p in found if p.suffix.lower() not in VIDEO_SUFFIXES], videos


SYNTHETIC_NOTE = (
    "note: {name} finds drawn figures like those of pose synth, not people in photos; for photos use the "
    "authors' released checkpoints (README, 'For photos')"
)


def _count(n: int, noun: str) -> str:
    """``1 image``, ``8 images``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _image_id(path: Path, index: int) -> int:
    """COCO file names carry the id in their digits (000000000785.jpg); other names get their index."""
    return int(path.stem) if path.stem.isdigit() else index


@app.command()
def predict(
    inputs: Annotated[list[Path], typer.Argument(help="images, videos (mp4, webm, mov, ...) or folders")],
    model: DefaultModelOpt = DEFAULT_MODEL,
    weights: WeightsOpt = None,
    out: Annotated[Path, typer.Option(help="output folder")] = Path("out"),
    overlay: Annotated[bool, typer.Option(help="also write skeleton overlays (an H.264 MP4 per video)")] = False,
    flip: Annotated[bool | None, typer.Option(help="flip test (default: the model's)")] = None,
    scales: ScalesOpt = None,
    min_score: Annotated[
        float | None, typer.Option(help="drop poses scoring below this (default: the model's test.score_threshold)")
    ] = None,
    stride: Annotated[int, typer.Option(min=1, help="videos: run every stride-th frame")] = 1,
    max_frames: Annotated[int | None, typer.Option(min=1, help="videos: stop after this many frames")] = None,
    track: Annotated[bool, typer.Option(help="videos: track ids that persist across frames")] = True,
    smoothing: Annotated[bool, typer.Option(help="videos: One-Euro filter on tracked keypoints")] = False,
    device: DeviceOpt = "cpu",
    backend: BackendOpt = "auto",
    precision: PrecisionOpt = "float32",
) -> None:
    """Detect every person's keypoints; writes predictions.json (COCO results) for images, <video>.ndjson
    (one line per frame, people with track ids) for videos, and optional overlays.

    Poses below the model's score threshold (--min-score) are dropped, as the service drops them.
    """
    from pose.api import PoseEstimator

    if smoothing and not track:
        raise UserError("--smoothing follows tracks; it needs --track")
    paths, videos = _media(inputs)
    est = PoseEstimator.from_config(model, weights=weights, device=device, backend=backend, precision=precision)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        run = _MediaRun(est, out, overlay, stride, max_frames, track, smoothing, flip, scales, min_score)
        results = _predict_images(run, paths)
        frames = [_predict_video(run, path) for path in videos]
    except BaseException:
        if created and not any(out.iterdir()):
            out.rmdir()  # a failed run leaves no empty folder behind
        raise
    if est.config.name == DEFAULT_MODEL.name:  # the embedded model was trained on drawings only
        typer.echo(SYNTHETIC_NOTE.format(name=est.config.name), err=True)
    if paths:
        typer.echo(f"{_count(len(results), 'pose')} from {_count(len(paths), 'image')} -> {out / 'predictions.json'}")
    for path, count in zip(videos, frames, strict=True):
        typer.echo(f"{_count(count, 'frame')} of {path.name} -> {out / (path.stem + '.ndjson')}")


@dataclass(frozen=True)
class _MediaRun:
    """What one ``pose predict`` asks of every image and video it is given."""

    est: PoseEstimator
    out: Path
    overlay: bool
    stride: int
    max_frames: int | None
    track: bool
    smoothing: bool
    flip: bool | None
    scales: list[float] | None
    min_score: float | None


def _predict_images(run: _MediaRun, paths: list[Path]) -> list[dict]:
    """Images to predictions.json (and overlays); returns the COCO results."""
    from pose.draw import draw_people, encode_image
    from pose.results import coco_results, to_people

    est = run.est
    results: list[dict] = []
    for index, path in enumerate(tqdm(paths, desc="images", unit="img", disable=len(paths) < 2)):
        image = est.read_image(path)
        poses = est.predict(image, scales=run.scales, flip=run.flip, min_score=run.min_score)
        results += coco_results(_image_id(path, index), poses.keypoints, poses.scores)
        if run.overlay:
            people = to_people(poses.keypoints, poses.scores, poses.boxes)
            drawn = draw_people(image, people, est.config.keypoints.skeleton)
            (run.out / f"{path.stem}_pose.jpg").write_bytes(encode_image(drawn))
    if paths:
        (run.out / "predictions.json").write_text(json.dumps(results))
    return results


def _predict_video(run: _MediaRun, path: Path) -> int:
    """One video to ``<stem>.ndjson`` (and ``<stem>_pose.mp4``); returns the frames written."""
    from pose.draw import draw_people, track_colors
    from pose.results import best_first, frame_record, to_people
    from pose.tracking import TrackerConfig
    from pose.video import VideoWriter, probe

    est = run.est
    info = probe(path)  # a file that is not a video fails here, before anything is written
    names = est.config.keypoints.names
    writer = VideoWriter(run.out / f"{path.stem}_pose.mp4", info.fps / run.stride) if run.overlay else None
    frames = 0
    try:
        with (run.out / f"{path.stem}.ndjson").open("w") as lines:
            tracked = est.track_video(
                path, run.stride, run.max_frames, config=TrackerConfig(smoothing=run.smoothing), scales=run.scales,
                flip=run.flip, min_score=run.min_score,
            )  # fmt: skip
            total = info.num_frames // run.stride
            for frame, people in tqdm(tracked, desc=path.name, unit="frame", total=total):
                ids = people.track_ids if run.track else None
                record = frame_record(
                    frame.index, frame.time_s, people.keypoints, people.scores, people.boxes, ids, names
                )
                lines.write(json.dumps(record) + "\n")
                frames += 1
                if writer is not None:
                    order = best_first(people.scores)
                    drawn = to_people(people.keypoints[order], people.scores[order], people.boxes[order], sort=False)
                    colors = track_colors(people.track_ids[order].tolist()) if run.track else None
                    writer.write(draw_people(frame.image, drawn, est.config.keypoints.skeleton, colors=colors))
    finally:
        if writer is not None:
            writer.close()
    return frames


@app.command()
def batch(
    inputs: Annotated[
        list[str], typer.Argument(help="folders, glob patterns, .txt/.csv/.parquet manifests, images, videos")
    ],
    out: Annotated[Path, typer.Option(help="output folder (rerun into it to resume)")],
    model: DefaultModelOpt = DEFAULT_MODEL,
    weights: WeightsOpt = None,
    device: DeviceOpt = "cpu",
    backend: BackendOpt = "auto",
    precision: PrecisionOpt = "float32",
    batch_size: Annotated[int, typer.Option(min=1, help="images per forward")] = 8,
    workers: Annotated[
        int | None, typer.Option(min=0, help="DataLoader decoding processes (default: by device and cores)")
    ] = None,
    shard_size: Annotated[int, typer.Option(min=1, help="items per committed shard (unit of resumption)")] = 256,
    stride: Annotated[int, typer.Option(min=1, help="every N-th video frame")] = 1,
    flip: Annotated[bool | None, typer.Option(help="flip test (default: the model's)")] = None,
    scales: ScalesOpt = None,
    overlay: Annotated[bool, typer.Option(help="also write skeleton overlays")] = False,
    min_score: Annotated[
        float | None,
        typer.Option(min=0, help="drop poses scoring below this (default: the model's test.score_threshold)"),
    ] = None,
    progress: Annotated[bool, typer.Option(help="progress bar with images/s and ETA")] = True,
    ray: Annotated[bool, typer.Option("--ray", help="run on Ray Data (see --ray-address)")] = False,
    ray_address: Annotated[
        str | None, typer.Option(help="Ray cluster (default: $RAY_ADDRESS, else a local Ray)")
    ] = None,
    actors: Annotated[int, typer.Option(min=1, help="Ray: model replicas")] = 1,
    gpus_per_actor: Annotated[float, typer.Option(min=0, help="Ray: GPUs per replica (1: one model per GPU)")] = 0,
    cpus_per_actor: Annotated[float, typer.Option(min=0, help="Ray: CPU slots per replica")] = 1,
) -> None:
    """Run a whole data set: Parquet, JSONL and COCO results in resumable shards; ``--ray`` for a cluster."""
    from pose.bulk import BulkOptions, InputError, JobMismatchError, ModelSpec, RayOptions, run_batch

    options = BulkOptions(
        batch_size=batch_size,
        workers=workers,
        shard_size=shard_size,
        stride=stride,
        flip=flip,
        scales=tuple(scales) if scales else None,
        overlay=overlay,
        min_score=min_score,
        progress=progress,
    )
    spec = ModelSpec(str(model), str(weights) if weights else None, device, backend, precision)
    cluster = RayOptions(ray_address, actors, gpus_per_actor, cpus_per_actor) if ray or ray_address else None
    try:
        summary = run_batch(inputs, out, spec, options, cluster)
    except (InputError, JobMismatchError) as err:
        typer.echo(f"Error: {err}", err=True)
        raise typer.Exit(2) from None
    # a rerun that finds every shard done ran nothing: no rate to report
    rate = f"{summary.images_per_s:.2f} images/s" if summary.skipped_shards < summary.shards else "nothing left to run"
    typer.echo(
        f"{_count(summary.images, 'image')}, {_count(summary.people, 'pose')}, {_count(summary.errors, 'error')} "
        f"in {_count(summary.shards, 'shard')} "
        f"({summary.skipped_shards} already done), {rate} -> {out}"
    )


@app.command()
def raw(
    image: Annotated[Path, typer.Argument(help="one image")],
    model: ModelOpt,
    weights: WeightsOpt = None,
    out: Annotated[Path, typer.Option(help="output .npz")] = Path("raw.npz"),
    flip: Annotated[bool | None, typer.Option(help="flip test (default: the model's)")] = None,
    device: DeviceOpt = "cpu",
    backend: BackendOpt = "auto",
    precision: PrecisionOpt = "float32",
) -> None:
    """Save scale-1 heatmaps, center heatmap and regressed joints (heatmap grid: input / 4, or / 2) as .npz."""
    from pose.api import PoseEstimator

    est = PoseEstimator.from_config(model, weights=weights, device=device, backend=backend, precision=precision)
    result = est.raw(est.read_image(image), flip=flip)
    np.savez_compressed(
        out,
        heatmaps=result.heatmaps.cpu().numpy(),
        center=result.center.cpu().numpy(),
        keypoints=result.keypoints.cpu().numpy(),
        input_size=np.array(result.transform.input_size),
    )
    typer.echo(f"heatmaps {tuple(result.heatmaps.shape)}, keypoints {tuple(result.keypoints.shape)} -> {out}")


@app.command()
def evaluate(
    annotations: Annotated[Path, typer.Argument(help="COCO or CrowdPose keypoint annotation JSON")],
    images: Annotated[Path, typer.Argument(help="folder of the annotated images")],
    model: DefaultModelOpt = DEFAULT_MODEL,
    weights: WeightsOpt = None,
    flip: Annotated[bool | None, typer.Option(help="flip test (default: the model's)")] = None,
    scales: ScalesOpt = None,
    out: Annotated[Path | None, typer.Option(help="also write the COCO results JSON here")] = None,
    device: DeviceOpt = "cpu",
    backend: BackendOpt = "auto",
    precision: PrecisionOpt = "float32",
) -> None:
    """AP/AR of the full pipeline on an annotated set (faster-coco-eval; CrowdPose easy/medium/hard).

    Every pose is evaluated, those scoring 0 or below too, as in the authors' evaluation (predict drops them).
    """
    from pose.api import PoseEstimator
    from pose.evaluation import evaluate_keypoints, predict_dataset

    est = PoseEstimator.from_config(model, weights=weights, device=device, backend=backend, precision=precision)
    results = predict_dataset(est, annotations, images, scales=scales, flip=flip)
    if out is not None:
        out.write_text(json.dumps(results))
    kp = est.config.keypoints
    stats = evaluate_keypoints(annotations, results, kp.dataset, kp.sigmas)
    typer.echo("  ".join(f"{k} {v:.4f}" for k, v in stats.items()))


def _checked(path: Path | None, load: Callable[[Path], object], if_missing: str) -> str:
    """Whether a checkpoint is there; one that is gets loaded, so a file that does not fit raises here."""
    if path is None:
        return f"none named in the config; {if_missing}"
    if not path.is_file():
        return f"{path} missing; {if_missing}"
    load(path)
    return f"{path} present, keys and shapes fit the model"


@app.command()
def info(model: DefaultModelOpt = DEFAULT_MODEL, weights: WeightsOpt = None) -> None:
    """Print a model's configuration and parameter count, and check its weights and scoring net.

    A checkpoint that is there is checked key by key and shape by shape against the model, so a downloaded
    file of another architecture or dataset is caught before the first prediction.
    """
    from pose.checkpoint import load_weights
    from pose.config import load_model_config
    from pose.models.hrnet import create_model
    from pose.rescore import load_scoring_net

    cfg = load_model_config(model)
    net = create_model(cfg)
    unique = sum(p.numel() for p in net.parameters())
    dim = cfg.keypoints.score_feature_dim
    weights_state = _checked(weights or cfg.resolve(cfg.weights), lambda p: load_weights(net, p), WEIGHTS_HINT)
    rescore_state = _checked(
        cfg.resolve(cfg.rescore_weights),
        lambda p: load_scoring_net(p, dim),
        "poses keep the mean of their joint scores",
    )
    typer.echo(
        f"{cfg.name}: {cfg.description}\n  input {cfg.input.size}, {cfg.keypoints.num_keypoints} keypoints "
        f"({cfg.keypoints.dataset}), {unique:,} parameters\n  weights: {weights_state}\n  scoring net: {rescore_state}"
    )


def _overrides(pairs: list[str] | None) -> dict:
    """``key=value`` pairs, values parsed as YAML (``epochs=2``, ``milestones=[3,4]``)."""
    import yaml

    found = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected key=value, got {pair!r}")
        found[key.strip()] = yaml.safe_load(value)
    return found


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="training run YAML (see pose.train.config.TrainConfig)")],
    resume: Annotated[bool, typer.Option(help="continue from the run folder's last.pth")] = False,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda when available)")] = None,
    override: Annotated[list[str] | None, typer.Option("--set", help="override a key, e.g. --set epochs=2")] = None,
) -> None:
    """Train a model; on several GPUs or nodes: torchrun --nproc_per_node N -m pose train run.yaml"""
    import logging

    from pose.train.config import load_train_config
    from pose.train.loop import train as run_training

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg = load_train_config(config, _overrides(override))
    result = run_training(cfg, resume=resume, device=device)
    final = result.metrics.get(max(result.metrics)) if result.metrics else None
    epochs = _count(result.epochs_run, "epoch")
    summary = f"{result.output}: {epochs} in {result.seconds:.0f} s, last loss {result.last_loss:.4g}"
    typer.echo(summary + (f", AP {final['AP']:.4f} AR {final['AR']:.4f}" if final else ""))


@app.command()
def synth(
    out_dir: Annotated[Path, typer.Argument(help="output folder: images/ and annotations.json")],
    images: Annotated[int, typer.Option(min=1, help="number of images")] = 1000,
    seed: Annotated[int, typer.Option(help="same seed, same files")] = 0,
    size: Annotated[int, typer.Option(min=32, help="square image side in pixels")] = 256,
    min_people: Annotated[int, typer.Option(min=1, help="fewest people per image")] = 1,
    max_people: Annotated[int, typer.Option(min=1, help="most people per image")] = 6,
    min_height: Annotated[float, typer.Option(min=0.01, help="smallest standing height / image height")] = 0.25,
    occluder_prob: Annotated[float, typer.Option(min=0, max=1, help="chance of occluding shapes per image")] = 0.35,
    negatives: Annotated[
        int, typer.Option(min=0, help="extra images with nobody in them (plain, gradient, noise, clutter, tiny)")
    ] = 0,
) -> None:
    """Write a synthetic COCO keypoint dataset of drawn figures, for CPU training runs and tests."""
    from pose.data.synthetic import SceneConfig, write_dataset

    if min_people > max_people:
        raise typer.BadParameter(f"--min-people {min_people} is above --max-people {max_people}")
    config = SceneConfig(
        size=(size, size), people=(min_people, max_people), height=(min_height, 0.9), occluder_prob=occluder_prob
    )
    path = write_dataset(out_dir, images, seed, config, progress=images > 1, negatives=negatives)
    empty = f" and {_count(negatives, 'image')} with nobody" if negatives else ""
    typer.echo(f"{_count(images, 'image')}{empty} -> {out_dir / 'images'}, annotations -> {path}")


@app.command("train-rescore")
def train_rescore(
    model: ModelOpt,
    annotations: Annotated[Path, typer.Option(help="training set: COCO keypoint JSON")],
    images: Annotated[Path, typer.Option(help="training set: image folder")],
    out: Annotated[Path, typer.Option(help="where to save the scoring net (e.g. <model>/1/rescore.pth)")],
    weights: WeightsOpt = None,
    epochs: Annotated[int, typer.Option(min=1)] = 20,
    max_images: Annotated[int | None, typer.Option(min=1, help="use only the first N images")] = None,
    device: DeviceOpt = "cpu",
) -> None:
    """Train the pose scoring net on the OKS of the model's own detections (the paper's rescoring)."""
    import torch

    from pose.api import PoseEstimator
    from pose.train.rescore import collect_rescore_data, train_scoring_net

    est = PoseEstimator.from_config(model, weights=weights, device=device)
    features, oks = collect_rescore_data(est, annotations, images, max_images=max_images)
    net, history = train_scoring_net(features, oks, epochs=epochs)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), out)
    poses = _count(len(oks), "pose")
    typer.echo(f"{poses} (mean OKS {oks.mean():.3f}); MSE {history[0]:.4f} -> {history[-1]:.4f}; saved {out}")


@app.command("average-weights")
def average_weights(
    checkpoints: Annotated[list[Path], typer.Argument(help="checkpoints to average, e.g. a run's epochs/*.pth")],
    model: ModelOpt,
    out: Annotated[Path, typer.Option(help="where to save the averaged weights")],
    bn_annotations: Annotated[
        Path | None, typer.Option(help="training set JSON to measure batch-norm statistics on (recommended)")
    ] = None,
    bn_images: Annotated[Path | None, typer.Option(help="its image folder")] = None,
    bn_batches: Annotated[int, typer.Option(min=1, help="augmented training batches for the statistics")] = 100,
    bn_keep_empty: Annotated[
        bool, typer.Option(help="measure on images with nobody in them too, as training with keep_empty_images does")
    ] = False,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    seed: Annotated[int, typer.Option(help="augmentation and order of the statistics pass")] = 0,
    device: DeviceOpt = "cpu",
) -> None:
    """Average checkpoints uniformly (SWA-style) and re-measure batch-norm statistics on training images."""
    import torch
    from torch.utils.data import DataLoader

    from pose.checkpoint import CheckpointError, check_state_dict, save_checkpoint
    from pose.config import load_model_config
    from pose.data.dataset import KeypointDataset
    from pose.models.hrnet import create_model
    from pose.train.averaging import average_checkpoints, recalibrate_batchnorm, training_images

    if (bn_annotations is None) != (bn_images is None):
        raise typer.BadParameter("--bn-annotations and --bn-images go together")
    cfg = load_model_config(model)
    net = create_model(cfg)
    try:
        state = average_checkpoints(checkpoints)
        check_state_dict(net, state)
    except CheckpointError as err:
        raise UserError(f"averaging {len(checkpoints)} checkpoints: {err}") from None
    net.load_state_dict(state)
    note = "batch-norm statistics averaged too"
    if bn_annotations is not None and bn_images is not None:
        dataset = KeypointDataset(bn_annotations, bn_images, cfg, train=True, seed=seed, keep_empty=bn_keep_empty)
        order = torch.Generator().manual_seed(seed)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=order)
        seen = recalibrate_batchnorm(net.to(device), training_images(loader, bn_batches), device)
        note = f"batch-norm statistics measured on {_count(seen, 'training image')}"
    save_checkpoint(net.cpu(), out, cfg.name, averaged=[str(p) for p in checkpoints])
    typer.echo(f"averaged {_count(len(checkpoints), 'checkpoint')}, {note} -> {out}")


if __name__ == "__main__":
    app()
