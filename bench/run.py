"""One benchmark entry point: network per backend, grouping, whole pipeline against the per-image baseline,
the service on loopback, peak memory. Writes a JSON report, a Markdown table and (with matplotlib) a plot.

    python -m bench.run --quick --out bench/results/quick_cpu        # CPU, a few minutes
    python -m bench.run --device cuda --out bench/results/h100        # full run on a GPU

Every ratio is measured side by side in the same run. The baseline is the straightforward pipeline: our
model one image at a time, then the per-image loop decoder of the test suite.
"""

from __future__ import annotations

import asyncio
import json
import resource
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer

import tests.reference_decoder as reference
from bench.common import environment, time_call
from bench.decode import _pool_peaks
from bench.decode import measure as decode_measure
from pose.config import load_model_config
from pose.models.hrnet import create_model
from pose.ops.adaptive_conv import use_implementation
from pose.pipeline import BatchPipeline
from pose.postprocess import fuse_scales

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TINY = ROOT / "tests" / "fixtures" / "tiny_coco_w8_256.yaml"


def network_rows(
    model: str, size: tuple[int, int], batches: list[int], device: str, repeat: int, full: bool
) -> list[dict]:
    """Forward latency per backend and batch size (random weights: latency does not depend on them)."""
    cfg = load_model_config(ROOT / "model_repo" / model)
    torch.manual_seed(0)
    net = create_model(cfg).eval().to(device)
    variants: dict[str, Any] = {"torch eager fp32": (torch.float32, False, "torch")}
    variants["torch channels_last fp32"] = (torch.float32, True, "torch")
    if device.startswith("cuda"):
        variants["torch fp16 channels_last"] = (torch.float16, True, "torch")
        variants["torch bf16 channels_last"] = (torch.bfloat16, True, "torch")
        variants["torch fp16 + triton adaptive conv"] = (torch.float16, True, "triton")
    rows = []
    for name, (dtype, channels_last, impl) in variants.items():
        if impl == "triton":
            import export.triton_kernel  # noqa: F401
        model_v = net.to(dtype=dtype, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        for batch in batches:
            x = torch.randn(batch, 3, *size, device=device, dtype=dtype)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), use_implementation(impl):
                t = time_call(lambda x=x, m=model_v: m(x), repeat, device=device)
            rows.append(
                {"backend": name, "batch": batch, "ms": t["median_ms"], "images_per_s": 1000 * batch / t["median_ms"]}
            )
        net = net.float().to(memory_format=torch.contiguous_format)
    if device.startswith("cuda"):  # compilation takes minutes on a CPU and pays only on a GPU
        compiled = torch.compile(net.half().to(memory_format=torch.channels_last), mode="max-autotune")
        for batch in batches:
            x = torch.randn(batch, 3, *size, device=device, dtype=torch.float16).contiguous(
                memory_format=torch.channels_last
            )
            with torch.inference_mode():
                t = time_call(lambda x=x: compiled(x), repeat, warmup=2, device=device)
            rows.append(
                {
                    "backend": "torch.compile fp16",
                    "batch": batch,
                    "ms": t["median_ms"],
                    "images_per_s": 1000 * batch / t["median_ms"],
                }
            )
        net = net.float().to(memory_format=torch.contiguous_format)
    if full:
        import tempfile

        from export.onnx_export import export_onnx
        from pose.runtimes.onnxruntime_backend import OnnxRuntimeBackend

        path = Path(tempfile.mkdtemp()) / "model.onnx"
        export_onnx(net.cpu(), path, "portable", size)
        ort = OnnxRuntimeBackend(path, cfg.keypoints.num_keypoints, device)
        for batch in batches:
            x = torch.randn(batch, 3, *size, device=device)
            t = time_call(lambda x=x: ort(x), repeat, device=device)
            rows.append(
                {
                    "backend": "onnxruntime",
                    "batch": batch,
                    "ms": t["median_ms"],
                    "images_per_s": 1000 * batch / t["median_ms"],
                }
            )
    return rows


def pipeline_rows(images: list[np.ndarray], batches: list[int], device: str) -> list[dict]:
    """Whole path on real photos: per-image baseline (batch-1 network + loop decoder) vs the batched pipeline."""
    from pose.api import PoseEstimator

    est = PoseEstimator.from_config(TINY, device=device)
    reference._peak_values = _pool_peaks
    cfg = est.config

    def baseline(image: np.ndarray) -> None:
        outputs, transform = est.forward(image)
        heat = [o.heatmaps[0].cpu().numpy() for o in outputs]
        kpts = [o.keypoints[0].cpu().numpy() for o in outputs]
        base = (transform.input_size[1], transform.input_size[0])
        fused = fuse_scales([o.heatmaps for o in outputs], base)[0].cpu().numpy()
        reference.reference_group(heat, kpts, fused, [1.0], cfg.decode)

    start = time.perf_counter()
    for im in images:
        baseline(im)
    base_ms = 1000 * (time.perf_counter() - start) / len(images)
    pipeline = BatchPipeline(cfg, est.model, est.scoring_net, device)
    rows = []
    for batch in batches:
        batch_images = (images * batch)[:batch]
        t = time_call(lambda b=batch_images: pipeline.run(b), 1, device=device)
        per = t["median_ms"] / batch
        rows.append(
            {"batch": batch, "batched_ms_per_image": per, "baseline_ms_per_image": base_ms, "speedup": base_ms / per}
        )
    return rows


def service_rows(concurrency: list[int], batch: int, requests: int, device: str) -> list[dict]:
    import httpx

    from bench.load import _level, _signature, serve_for_load

    payloads = [p.read_bytes() for p in sorted((SHARED / "data/coco_sample/mmpose").glob("*.jpg"))]
    url, proc = serve_for_load(TINY, batch, 10.0, device)
    try:
        expected = [
            _signature(
                httpx.post(f"{url}/v1/pose", content=p, headers={"content-type": "image/jpeg"}, timeout=600).json()
            )
            for p in payloads
        ]
        return [
            {"max_batch_size": batch, **asyncio.run(_level(url, payloads, expected, c, requests))} for c in concurrency
        ]
    finally:
        proc.terminate()
        proc.wait(timeout=120)


def markdown(report: dict) -> str:
    lines = [
        f"# Benchmark report ({report['env']['device']}, {report['mode']})",
        "",
        f"Machine: {json.dumps(report['env'])}",
        "",
    ]
    for section, rows in report["sections"].items():
        if not rows:
            continue
        if isinstance(rows, dict):  # skipped, with a reason
            lines += [f"## {section}", "", f"skipped: {rows['skipped']}", ""]
            continue
        keys = list(rows[0])
        lines += [f"## {section}", "", "| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
        for r in rows:
            lines.append("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = report["sections"]["network"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for backend in dict.fromkeys(r["backend"] for r in rows):
        pts = [(r["batch"], r["images_per_s"]) for r in rows if r["backend"] == backend]
        ax.plot(*zip(*pts, strict=True), marker="o", label=backend)
    ax.set_xlabel("batch size")
    ax.set_ylabel("images / s (network)")
    ax.set_title(f"{report['model']} {report['size']} on {report['env'].get('gpu', report['env']['cpu'])}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def main(
    quick: Annotated[bool, typer.Option(help="small sizes and counts: a few minutes on 2 CPU cores")] = False,
    device: str = "cuda" if torch.cuda.is_available() else "cpu",
    out: Annotated[Path, typer.Option(help="output folder for report.json, report.md, report.png")] = Path(
        "bench/results/latest"
    ),
) -> None:
    model = "hrnet_w32_coco_512"
    size = (256, 256) if quick else (512, 512)
    batches = [1, 2] if quick else [1, 4, 8, 16, 32]
    report: dict[str, Any] = {
        "benchmark": "suite",
        "mode": "quick" if quick else "full",
        "model": model,
        "size": f"{size[0]}x{size[1]}",
        "env": environment(device),
        "sections": {},
    }
    sections = report["sections"]
    sections["network"] = network_rows(model, size, batches, device, 2 if quick else 5, full=not quick)
    sections["postprocess"] = decode_measure(
        [1, 10, 30], [1, 8] if quick else [1, 8, 32], 64 if quick else 128, device, 2 if quick else 5
    )
    have_shared = (SHARED / "parity/coco/ckpt.pth").is_file()
    if have_shared:
        photos = sorted((SHARED / "data/coco_sample/mmpose").glob("*.jpg"))
        from pose.api import PoseEstimator

        images = [PoseEstimator.read_image(p) for p in photos]
        sections["pipeline_vs_baseline"] = pipeline_rows(images, [1, 4] if quick else [1, 4, 8], device)
        sections["service"] = service_rows(
            [1, 4] if quick else [1, 4, 16, 64], 4 if quick else 8, 8 if quick else 64, device
        )
    else:
        reason = {"skipped": f"needs the tiny model and photos in {SHARED}"}
        sections["pipeline_vs_baseline"] = reason
        sections["service"] = reason
    memory = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.startswith("cuda"):
        memory["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    sections["memory"] = [memory]
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(markdown(report))
    plotted = plot(report, out / "report.png")
    print(markdown(report))
    print(f"report -> {out}/report.json, report.md" + (", report.png" if plotted else ""))


if __name__ == "__main__":
    typer.run(main)
