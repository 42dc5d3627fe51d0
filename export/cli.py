"""``pose-export``: checkpoint -> ONNX (portable, plugin) -> TensorRT, and cross-backend verification."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pose.cli_errors import CommandLine, UserError

app = CommandLine(help="Export models and verify the exported artifacts.")

ModelArg = Annotated[Path, typer.Option("--model", "-m", help="model_repo/<name> folder (its config.yaml)")]
WeightsOpt = Annotated[Path | None, typer.Option(help="checkpoint (default: the config's weights)")]


def _load(model: Path, weights: Path | None):  # noqa: ANN202
    from pose.api import PoseEstimator

    return PoseEstimator.from_config(model, weights=weights)


@app.command()
def onnx(
    model: ModelArg,
    weights: WeightsOpt = None,
    variant: Annotated[str, typer.Option(help="portable, plugin or both")] = "both",
    size: Annotated[str, typer.Option(help="example input HxW used for tracing")] = "512x512",
    out: Annotated[Path | None, typer.Option(help="output folder (default: <model>/<version>/)")] = None,
    record: Annotated[
        bool, typer.Option(help="record the graphs in <model>/<version>/onnx.json (off for a read-only model repo)")
    ] = True,
) -> None:
    """Export ONNX graphs and record them (opset, input/output shapes) in <model>/<version>/onnx.json."""
    from export.artifacts import describe_onnx, record_onnx
    from export.onnx_export import export_onnx

    est = _load(model, weights)
    root = model if model.is_dir() else model.parent
    version_dir = root / str(est.config.version)
    folder = out or version_dir
    h, w = (int(v) for v in size.split("x"))
    variants = ["portable", "plugin"] if variant == "both" else [variant]
    for v in variants:
        path = folder / ("model.onnx" if v == "portable" else "model_plugin.onnx")
        proto = export_onnx(est.model, path, v, (h, w))  # type: ignore[arg-type]
        if record:
            relative = str(path.relative_to(root)) if path.is_relative_to(root) else str(path.resolve())
            record_onnx(version_dir, describe_onnx(proto, relative, v))
        typer.echo(f"{v}: {path} ({path.stat().st_size / 1e6:.1f} MB)")


@app.command()
def verify(
    model: ModelArg,
    images: Annotated[list[Path], typer.Argument(help="images to compare on")],
    weights: WeightsOpt = None,
    onnx_path: Annotated[Path | None, typer.Option("--onnx", help="portable ONNX (default: the config's)")] = None,
    engine: Annotated[Path | None, typer.Option(help="TensorRT engine to include (needs tensorrt and a GPU)")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the comparison as JSON")] = None,
) -> None:
    """Torch vs ONNX Runtime (and TensorRT): max/mean differences of raw outputs and OKS of final poses."""
    from export.verify import compare
    from pose.pipeline import Network
    from pose.preprocess import image_to_tensor, plan_transform, resize_image
    from pose.runtimes.onnxruntime_backend import OnnxRuntimeBackend

    est = _load(model, weights)
    cfg = est.config
    path = onnx_path or next((cfg.resolve(a.path) for a in cfg.onnx if a.variant == "portable"), None)
    if path is None:
        raise UserError(
            f"{model} has no portable ONNX graph recorded; run pose-export onnx --model {model} or pass --onnx"
        )
    candidates: dict[str, Network] = {"onnxruntime": OnnxRuntimeBackend(path, cfg.keypoints.num_keypoints)}
    if engine is not None:
        from pose.runtimes.tensorrt_backend import TensorRTBackend

        candidates["tensorrt"] = TensorRTBackend(engine, cfg.keypoints.num_keypoints)
    pictures = [est.read_image(p) for p in images]
    t = plan_transform(pictures[0].shape[1], pictures[0].shape[0], cfg.input.size)
    inputs = image_to_tensor(resize_image(pictures[0], t), cfg.input)
    rows = compare(cfg, est.model, candidates, est.scoring_net, pictures, inputs)
    for r in rows:
        typer.echo(
            f"{r.name:12s} heatmaps max {r.heatmaps_max:.2e} mean {r.heatmaps_mean:.2e} | offsets max "
            f"{r.offsets_max:.2e} mean {r.offsets_mean:.2e} | pose OKS {r.mean_oks:.4f} "
            f"| same counts {r.same_pose_count}"
        )
    if json_out:
        json_out.write_text(json.dumps([r.__dict__ for r in rows], indent=2))


def _require_tensorrt():  # noqa: ANN202 - the tensorrt module, which may not be importable here
    try:
        import tensorrt
    except ImportError:
        raise UserError(
            "tensorrt is not installed: pip install 'hrnet-pose-serving[tensorrt]' on a machine with a GPU"
        ) from None
    return tensorrt


@app.command()
def tensorrt(
    model: ModelArg,
    onnx_path: Annotated[Path | None, typer.Option("--onnx", help="plugin ONNX (default: the config's)")] = None,
    fp16: Annotated[bool, typer.Option(help="allow float16 kernels")] = True,
    max_batch: Annotated[int, typer.Option(help="largest batch of the optimization profiles")] = 32,
    out: Annotated[Path | None, typer.Option(help="engine file (default: <model>/<version>/model.plan)")] = None,
) -> None:
    """Build a TensorRT engine (+ .json metadata) for this GPU from the plugin ONNX graph."""
    _require_tensorrt()
    from export.tensorrt_engine import build_engine
    from pose.config import load_model_config

    cfg = load_model_config(model)
    source = onnx_path or next((cfg.resolve(a.path) for a in cfg.onnx if a.variant == "plugin"), None)
    if source is None:
        raise UserError(
            f"{model} has no plugin ONNX graph recorded; run pose-export onnx --model {model} or pass --onnx"
        )
    engine = out or model / str(cfg.version) / "model.plan"
    meta = build_engine(cfg, source, engine, fp16, max_batch, timing_cache=engine.with_suffix(".timing"))
    typer.echo(f"{engine}: TensorRT {meta.tensorrt_version}, sm {meta.compute_capability}, {meta.precision}")


@app.command("prepare-engine")
def prepare_engine_command(
    model: ModelArg,
    cache: Annotated[Path, typer.Option(help="engine cache folder (a volume shared by pods)")],
    weights: WeightsOpt = None,
    fp16: Annotated[bool, typer.Option(help="allow float16 kernels")] = True,
    max_batch: Annotated[int, typer.Option(help="largest batch of the optimization profiles")] = 8,
) -> None:
    """Make sure the cache holds a current engine for this model and GPU (what a pod runs before serving)."""
    trt = _require_tensorrt()
    import torch

    from export.engine_cache import prepare_engine
    from export.onnx_export import export_onnx
    from export.tensorrt_engine import build_engine
    from pose.config import load_model_config

    cfg = load_model_config(model)

    def export_plugin(path: Path) -> None:
        est = _load(model, weights)
        size = cfg.input.size
        export_onnx(est.model, path, "plugin", (size, size))

    def build(graph: Path, engine: Path) -> None:
        build_engine(cfg, graph, engine, fp16, max_batch, timing_cache=engine.with_suffix(".timing"))

    major, minor = torch.cuda.get_device_capability()
    engine = prepare_engine(
        cfg, cache, max_batch, fp16, (trt.__version__, f"{major}.{minor}"), export_plugin, build, weights, typer.echo
    )
    typer.echo(str(engine))


if __name__ == "__main__":
    app()
