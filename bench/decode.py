"""Grouping time per image versus people and batch size: the batched decoder against a per-image loop.

The loop baseline is the test suite's reference decoder (per image, per candidate, per pose, per joint
Python loops and scipy's curve_fit, like the authors' parser) with its peak finding done by a max-pool
as the authors do, so the comparison is with their style of code rather than with pixel loops.

    python -m bench.decode --out bench/results/decode_cpu.json
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F
import typer

import tests.reference_decoder as reference
from bench.common import environment, time_call, write_report
from pose.config import DecodeConfig
from pose.decode import group_poses
from pose.postprocess import fuse_scales

K = 17


def _pool_peaks(m: np.ndarray, kernel: int) -> np.ndarray:
    t = torch.from_numpy(m)[None, None]
    pooled = F.max_pool2d(t, kernel, 1, kernel // 2)
    return (t * (pooled == t)).numpy()[0, 0]


def synthetic_outputs(people: int, h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps with ``people`` figures (Gaussian joints and centers) and their regressed joints."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:h, 0:w]
    heat = 0.003 * rng.random((K + 1, h, w))
    kpts = np.zeros((2 * K, h, w))
    centers = rng.uniform([8, 8], [w - 8, h - 8], (people, 2))
    owner = np.stack([np.hypot(xs - cx, ys - cy) for cx, cy in centers]).argmin(0)
    for p, (cx, cy) in enumerate(centers):
        joints = np.stack([cx + rng.uniform(-8, 8, K), cy + rng.uniform(-10, 10, K)], -1)
        heat[K] = np.maximum(heat[K], 0.8 * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / 8))
        for j, (jx, jy) in enumerate(joints):
            heat[j] = np.maximum(heat[j], 0.9 * np.exp(-((xs - jx) ** 2 + (ys - jy) ** 2) / 8))
            kpts[2 * j][owner == p] = jx
            kpts[2 * j + 1][owner == p] = jy
    return heat.astype(np.float32), kpts.astype(np.float32)


def measure(
    people: list[int], batches: list[int], size: int, device: str, repeat: int, loop_repeat: int = 1
) -> list[dict]:
    """Per-image grouping time, batched and with the loop decoder, for each people count and batch size."""
    cfg = DecodeConfig()
    reference._peak_values = _pool_peaks  # the authors pool with max_pool2d
    rows = []
    for n in people:
        images = [synthetic_outputs(n, size, size, seed) for seed in range(max(batches))]
        heat_np, kpts_np = images[0]
        fused_np = fuse_scales([torch.from_numpy(heat_np)[None]], (4 * size, 4 * size))[0].numpy()

        def run_loop(heat_np=heat_np, kpts_np=kpts_np, fused_np=fused_np) -> None:
            reference.reference_group([heat_np], [kpts_np], fused_np, [1.0], cfg)

        loop = time_call(run_loop, loop_repeat, warmup=0)
        for batch in batches:
            heat = torch.stack([torch.from_numpy(h) for h, _ in images[:batch]]).to(device)
            kpts = torch.stack([torch.from_numpy(k) for _, k in images[:batch]]).to(device)
            fused = fuse_scales([heat], (4 * size, 4 * size))

            def run(heat=heat, kpts=kpts, fused=fused) -> None:
                group_poses([heat], [kpts], fused, [1.0], cfg)

            per_image = time_call(run, repeat, device=device)["median_ms"] / batch
            rows.append(
                {
                    "people": n,
                    "batch": batch,
                    "batched_ms_per_image": per_image,
                    "loop_ms_per_image": loop["median_ms"],
                    "speedup": loop["median_ms"] / per_image,
                }
            )
    return rows


def main(
    people: Annotated[list[int], typer.Option(help="people per image")] = [1, 10, 30],  # noqa: B006
    batches: Annotated[list[int], typer.Option(help="batch sizes")] = [1, 8, 32],  # noqa: B006
    size: Annotated[int, typer.Option(help="output grid side (128 = 512 input)")] = 128,
    device: str = "cpu",
    repeat: Annotated[int, typer.Option(help="timed runs of the batched decoder (median)")] = 7,
    loop_repeat: Annotated[int, typer.Option(help="timed runs of the loop decoder (median)")] = 3,
    out: Annotated[Path | None, typer.Option(help="JSON report")] = None,
) -> None:
    rows = measure(people, batches, size, device, repeat, loop_repeat)
    for r in rows:
        print(
            f"{r['people']:>2} people, batch {r['batch']:>2}: {r['batched_ms_per_image']:8.2f} ms/img batched, "
            f"{r['loop_ms_per_image']:8.1f} ms/img loop, x{r['speedup']:.1f}"
        )
    write_report(
        out,
        {
            "benchmark": "decode",
            "grid": [size, size],
            "repeat": repeat,
            "loop_repeat": loop_repeat,
            "statistic": "median",
            "env": environment(device),
            "rows": rows,
        },
    )


if __name__ == "__main__":
    typer.run(main)
