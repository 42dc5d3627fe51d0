"""The one GPU check: kernels, network per variant, whole pipeline, the service under load, agreement.

    python -m bench.gpu --out bench/results/gpu     # writes report.json and report.md there

Runs from a clean checkout with what the README installs, in about 6 minutes on one GPU. Each section
has its own time limit and its failure is written into the report; the next section still runs. The
network is HRNet-W32 at 512 with seed-0 weights (speed does not depend on them); agreement uses the
shipped synthetic model on drawn scenes, where poses mean something. ``--smoke`` runs every section
small on the CPU (the tiny test network, a few seconds of load) so CI keeps the script itself working.
"""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer

from bench.common import (
    PHOTOS,
    ROOT,
    drawn_scenes,
    environment,
    model_pipeline,
    pose_agreement,
    sample_images,
    start_service,
    time_call,
    write_report,
)

SYNTHETIC = ROOT / "model_repo" / "synthetic_w16_256"
# (name, settings of the torch backend): the reference, then what the service runs on CUDA by default.
GPU_VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("fp32 eager, torch op", {"half": False, "adaptive_conv": "torch", "cuda_graphs": False}),
    ("fp16 eager, fused kernel", {"half": True, "adaptive_conv": "auto", "cuda_graphs": False}),
    ("fp16 CUDA graphs, fused kernel (service default)", {"half": True, "adaptive_conv": "auto", "cuda_graphs": True}),
    (
        "fp16 body, fp32 heads, CUDA graphs, fused kernel",
        {"half": True, "float32_heads": True, "adaptive_conv": "auto", "cuda_graphs": True},
    ),
]


@dataclass(frozen=True)
class Plan:
    """What one run measures: the full check on a GPU, or a small smoke run of the same code on a CPU."""

    device: str = "cuda"
    model: Path = ROOT / "model_repo" / "hrnet_w32_coco_512"
    size: int = 512
    batches: tuple[int, ...] = (1, 8, 32)
    pipeline_batches: tuple[int, ...] = (1, 32)
    max_batch: int = 32
    load_levels: tuple[tuple[int, float], ...] = ((1, 15.0), (8, 15.0), (64, 20.0))  # (clients, seconds)
    variants: tuple[tuple[str, dict[str, Any]], ...] = tuple(GPU_VARIANTS)
    repeat: int = 10

    @property
    def half(self) -> bool:
        return self.device.startswith("cuda")


SMOKE = Plan(
    device="cpu",
    model=ROOT / "tests" / "fixtures" / "tiny_coco_w8_256.yaml",
    size=256,
    batches=(1, 2),
    pipeline_batches=(1, 2),
    max_batch=2,
    load_levels=((1, 2.0), (4, 2.0)),
    variants=(("fp32 eager, torch op", {"half": False, "adaptive_conv": "torch", "cuda_graphs": False}),),
    repeat=2,
)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _section(report: dict[str, Any], name: str, fn: Callable[[], Any]) -> None:
    """Run one section, keeping its result, or its error, and its time."""
    start = time.perf_counter()
    print(f"== {name}", flush=True)
    try:
        report[name] = fn()
    except Exception as err:  # noqa: BLE001 - the report says what broke; the next section runs
        report[name] = {"error": f"{type(err).__name__}: {err}"[:2000], "traceback": traceback.format_exc()[-3000:]}
    report[name + "_seconds"] = round(time.perf_counter() - start, 1)
    print(f"   {report[name + '_seconds']} s", flush=True)


def kernel_tests() -> dict[str, Any]:
    """The kernel, graph and backend tests, run for real on this GPU (no interpreter)."""
    tests = ["tests/test_triton_kernel.py", "tests/test_cuda_graphs.py", "tests/test_backends.py", "tests/test_fold.py"]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run(
        # A test file that cannot be collected (a package missing on the GPU host) must not cancel the others.
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--continue-on-collection-errors", *tests],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    lines = run.stdout.strip().splitlines()
    return {"returncode": run.returncode, "summary": lines[-1] if lines else "", "tail": run.stdout[-2500:]}


def _seed_weights(model: Path, folder: Path) -> Path:
    from pose.config import load_model_config
    from pose.models.hrnet import create_model

    torch.manual_seed(0)
    path = folder / "seed0.pth"
    torch.save(create_model(load_model_config(model)).state_dict(), path)
    return path


def _backend(model: Path, weights: Path | None, device: str, **options: Any) -> Any:
    from pose.config import load_model_config
    from pose.runtimes import RuntimeOptions
    from pose.runtimes.torch_backend import TorchBackend

    return TorchBackend(load_model_config(model), RuntimeOptions(weights=weights, device=device, **options))


def network(plan: Plan, weights: Path) -> list[dict[str, Any]]:
    """Forward latency of each variant at each batch size (a square input)."""
    rows = []
    for name, options in plan.variants:
        backend = _backend(plan.model, weights, plan.device, **options)
        for batch in plan.batches:
            x = torch.rand(batch, 3, plan.size, plan.size, device=plan.device)
            with torch.inference_mode():
                timing = time_call(lambda b=backend, x=x: b(x), repeat=plan.repeat, warmup=2, device=plan.device)
            rows.append(
                {
                    "variant": name,
                    "batch": batch,
                    **timing,
                    "images_per_s": batch * 1000 / timing["median_ms"],
                    "adaptive_conv": backend.report.adaptive_conv,
                    "fallback": backend.report.adaptive_conv_fallback,
                }
            )
            print(f"   {name:50s} b{batch:<3d} {timing['median_ms']:8.2f} ms", flush=True)
        del backend
        if plan.half:
            torch.cuda.empty_cache()
    return rows


def pipeline(plan: Plan, weights: Path) -> list[dict[str, Any]]:
    """The whole path (warp, network with flip, grouping, scoring) per image, as the service runs it."""
    backend = _backend(plan.model, weights, plan.device, half=plan.half)
    pipe = model_pipeline(plan.model, backend)
    images = sample_images()
    rows = []
    for batch in plan.pipeline_batches:
        chunk = [images[i % len(images)] for i in range(batch)]
        for _ in range(2):
            pipe.run(chunk)
        _sync(plan.device)
        runs = []
        for _ in range(plan.repeat):
            start = time.perf_counter()
            _, timings = pipe.run(chunk)
            _sync(plan.device)
            runs.append((time.perf_counter() - start, timings))
        wall = statistics.median(r[0] for r in runs)
        rows.append(
            {
                "batch": batch,
                "ms_per_image": 1000 * wall / batch,
                "images_per_s": batch / wall,
                "preprocess_ms": 1000 * statistics.median(r[1].preprocess for r in runs),
                "network_ms": 1000 * statistics.median(r[1].inference for r in runs),
                "grouping_ms": 1000 * statistics.median(r[1].postprocess for r in runs),
            }
        )
        print(f"   batch {batch}: {rows[-1]['ms_per_image']:.2f} ms/image", flush=True)
    return rows


async def _load(url: str, payloads: list[bytes], clients: int, seconds: float, cap: int) -> dict[str, Any]:
    """``clients`` loops posting photos for ``seconds`` (at most ``cap`` requests); latency percentiles."""
    import httpx

    latencies: list[float] = []
    codes: dict[int, int] = {}
    deadline = time.perf_counter() + seconds
    sent = 0

    async def client(c: httpx.AsyncClient, k: int) -> None:
        nonlocal sent
        while time.perf_counter() < deadline and sent < cap:
            sent += 1
            start = time.perf_counter()
            r = await c.post(
                f"{url}/v1/pose", content=payloads[k % len(payloads)], headers={"content-type": "image/jpeg"}
            )
            latencies.append(1000 * (time.perf_counter() - start))
            codes[r.status_code] = codes.get(r.status_code, 0) + 1
            k += 1

    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=clients)) as c:
        start = time.perf_counter()
        await asyncio.gather(*(client(c, k) for k in range(clients)))
        wall = time.perf_counter() - start
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]  # noqa: E731
    return {
        "clients": clients,
        "requests": len(latencies),
        "codes": codes,
        "images_per_s": len(latencies) / wall,
        "p50_ms": pick(0.5),
        "p99_ms": pick(0.99),
    }


def service(plan: Plan, weights: Path) -> dict[str, Any]:
    """``python -m service`` with its defaults for the device, loaded by loopback clients at each level."""
    import httpx

    settings: dict[str, str | None] = {
        "POSE_MODEL": str(plan.model),
        "POSE_WEIGHTS": str(weights),
        "POSE_DEVICE": plan.device,
        "POSE_HALF": str(plan.half).lower(),
        "POSE_MAX_BATCH_SIZE": str(plan.max_batch),
        "POSE_QUEUE_LIMIT": "1024",
        "POSE_REQUEST_TIMEOUT_S": "120",
        "TRITON_INTERPRET": None,  # compile the kernel for real
    }
    log = Path(tempfile.gettempdir()) / "pose_gpu_check_service.log"
    out: dict[str, Any] = {}
    start = time.monotonic()
    proc = None
    try:
        with log.open("w") as sink:
            url, proc = start_service(settings, sink, timeout_s=180)
        out["ready_s"] = round(time.monotonic() - start, 1)
        out["runtime"] = httpx.get(f"{url}/v1/models", timeout=10).json()["models"][0]["runtime"]
        payloads = [p.read_bytes() for p in sorted(PHOTOS.glob("*.jpg"))] or [_jpeg(im) for im in sample_images()]
        out["levels"] = []
        for clients, seconds in plan.load_levels:
            before = _batch_fill_counts(httpx.get(f"{url}/metrics", timeout=10).text)
            level = asyncio.run(_load(url, payloads, clients, seconds, cap=20000))
            after = _batch_fill_counts(httpx.get(f"{url}/metrics", timeout=10).text)
            batches = after[1] - before[1]
            level["mean_batch"] = (after[0] - before[0]) / batches if batches else None
            out["levels"].append(level)
            print(f"   {clients} clients: {level['images_per_s']:.1f} img/s, p99 {level['p99_ms']:.1f} ms", flush=True)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
            out["exit_code"] = proc.returncode
        out["log_tail"] = log.read_text()[-2000:]
    return out


def _batch_fill_counts(metrics: str) -> tuple[float, float]:
    total = re.search(r"^pose_batch_size_sum (\S+)", metrics, re.M)
    count = re.search(r"^pose_batch_size_count (\S+)", metrics, re.M)
    return (float(total.group(1)) if total else 0.0, float(count.group(1)) if count else 0.0)


def _jpeg(image: np.ndarray) -> bytes:
    import cv2

    return cv2.imencode(".jpg", image[..., ::-1])[1].tobytes()


def agreement(plan: Plan) -> dict[str, Any]:
    """The device's float32 (and on CUDA float16) poses against the CPU's, on drawn scenes with the
    synthetic model: every pose the decoder returns (most of them near-zero candidates that a rounding
    can drop or reorder), and under ``reported`` the poses the service reports (the model's score
    threshold)."""
    from pose.config import load_model_config

    threshold = load_model_config(SYNTHETIC).test.score_threshold
    scenes = drawn_scenes(8 if plan.half else 2, (384, 512))
    reference = model_pipeline(SYNTHETIC, _backend(SYNTHETIC, None, "cpu")).run(scenes)[0]
    out = {}
    kinds: list[tuple[str, dict[str, bool]]] = [("fp32", {})]
    if plan.half:
        kinds += [("fp16", {"half": True}), ("fp16_fp32_heads", {"half": True, "float32_heads": True})]
    for precision, options in kinds:
        name = f"{plan.device.split(':')[0]}_{precision}"
        got = model_pipeline(SYNTHETIC, _backend(SYNTHETIC, None, plan.device, **options)).run(scenes)[0]
        out[name] = pose_agreement(reference, got)
        reported = pose_agreement([r.above(threshold) for r in reference], [g.above(threshold) for g in got])
        out[name]["reported"] = {**reported, "score_threshold": threshold}
    return out


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    smoke = " (smoke run on the CPU: sizes are not the check's)" if report.get("plan", {}).get("smoke") else ""
    lines = [f"# GPU check: {env.get('gpu', env.get('cpu', '?'))}, torch {env['torch']}{smoke}", ""]
    tests = report.get("kernel_tests")
    if isinstance(tests, dict):
        lines += [f"Kernel, graph and backend tests: `{tests.get('summary') or tests.get('error')}`", ""]
    if isinstance(report.get("network"), list):
        lines += [
            f"| network variant ({report['plan']['model']}, {report['plan']['size']}) | batch | median ms | images/s |",
            "| --- | --- | --- | --- |",
        ]
        lines += [
            f"| {r['variant']} | {r['batch']} | {r['median_ms']:.2f} | {r['images_per_s']:.0f} |"
            for r in report["network"]
        ]
        lines.append("")
    if isinstance(report.get("pipeline"), list):
        lines += [
            f"| pipeline ({'fp16' if report.get('plan', {}).get('device', 'cuda') != 'cpu' else 'fp32'}, flip) batch "
            "| ms/image | images/s | warp ms | network ms | grouping ms |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {r['batch']} | {r['ms_per_image']:.2f} | {r['images_per_s']:.0f} | {r['preprocess_ms']:.1f} | "
            f"{r['network_ms']:.1f} | {r['grouping_ms']:.1f} |"
            for r in report["pipeline"]
        ]
        lines.append("")
    svc = report.get("service", {})
    if "levels" in svc:
        lines += [
            f"Service: ready after {svc['ready_s']} s, runtime {svc['runtime']}",
            "",
            "| clients | requests | images/s | p50 ms | p99 ms | mean batch | status codes |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in svc["levels"]:
            fill = f"{r['mean_batch']:.1f}" if r["mean_batch"] is not None else "-"
            lines.append(
                f"| {r['clients']} | {r['requests']} | {r['images_per_s']:.1f} | {r['p50_ms']:.1f} | "
                f"{r['p99_ms']:.1f} | {fill} | {r['codes']} |"
            )
        lines.append("")
    agree = report.get("agreement", {})
    for name, a in agree.items():
        if isinstance(a, dict):
            line = (
                f"- {name} vs CPU fp32: {100 * a['within_half_pixel']:.1f}% of {a['poses']} poses within 0.5 px, "
                f"equal counts on {a['scenes_with_equal_counts']} of {a['scenes']} scenes"
            )
            if "reported" in a:
                r = a["reported"]
                line += (
                    f"; reported poses (score >= {r['score_threshold']:g}): {100 * r['within_half_pixel']:.1f}% of "
                    f"{r['poses']}, equal counts on {r['scenes_with_equal_counts']} of {r['scenes']} scenes"
                )
            lines.append(line)
    errors = [f"- {k}: {v['error']}" for k, v in report.items() if isinstance(v, dict) and "error" in v]
    if errors:
        lines += ["", "Failed sections:", *errors]
    return "\n".join(lines) + "\n"


def main(
    out: Annotated[Path, typer.Option(help="folder for report.json and report.md")] = ROOT / "bench/results/gpu",
    skip: Annotated[list[str] | None, typer.Option(help="sections to skip")] = None,
    smoke: Annotated[bool, typer.Option(help="every section, small, on the CPU: checks the script")] = False,
) -> None:
    """Run every section and write the report."""
    plan = SMOKE if smoke else Plan()
    if plan.half and not torch.cuda.is_available():
        typer.echo("no CUDA device: this check needs one GPU (--smoke runs it small on the CPU)")
        raise typer.Exit(2)
    skip = [*(skip or []), *(["kernel_tests"] if smoke else [])]  # the interpreter is no test of the kernel
    report: dict[str, Any] = {
        "environment": environment(plan.device),
        "plan": {"model": plan.model.name, "size": plan.size, "device": plan.device, "smoke": smoke},
    }
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        weights = _seed_weights(plan.model, Path(tmp))
        sections: list[tuple[str, Callable[[], Any]]] = [
            ("kernel_tests", kernel_tests),
            ("network", lambda: network(plan, weights)),
            ("pipeline", lambda: pipeline(plan, weights)),
            ("service", lambda: service(plan, weights)),
            ("agreement", lambda: agreement(plan)),
        ]
        for name, fn in sections:
            if name not in skip:
                _section(report, name, fn)
                _write(out, report)  # after every section: a run cut short keeps what it measured
    _write(out, report)
    typer.echo(markdown(report))


def _write(out: Path, report: dict[str, Any]) -> None:
    write_report(out / "report.json", report)
    (out / "report.md").write_text(markdown(report))


if __name__ == "__main__":
    typer.run(main)
