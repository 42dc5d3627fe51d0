"""Forward latency of the network (no pre/postprocessing) per model, input size, batch and precision.

python -m bench.model_latency --out bench/results/model_latency_cpu.json
python -m bench.model_latency --device cuda --dtype float16 --channels-last --out ...
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
import typer

from bench.common import environment, time_call, write_report
from pose.config import load_model_config
from pose.models.hrnet import create_model

ROOT = Path(__file__).resolve().parents[1]


def main(
    model: Annotated[str, typer.Option(help="model_repo folder name")] = "hrnet_w32_coco_512",
    sizes: Annotated[list[str], typer.Option(help="HxW inputs")] = ["512x512", "512x768"],  # noqa: B006
    batches: Annotated[list[int], typer.Option(help="batch sizes")] = [1, 4],  # noqa: B006
    device: str = "cpu",
    dtype: Annotated[str, typer.Option(help="float32, float16 or bfloat16")] = "float32",
    channels_last: bool = False,
    repeat: int = 3,
    out: Annotated[Path | None, typer.Option(help="JSON report")] = None,
) -> None:
    cfg = load_model_config(ROOT / "model_repo" / model)
    net = create_model(cfg).eval().to(device=device, dtype=getattr(torch, dtype))
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    rows = []
    for size in sizes:
        h, w = (int(v) for v in size.split("x"))
        for batch in batches:
            x = torch.randn(batch, 3, h, w, device=device, dtype=getattr(torch, dtype))
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                timing = time_call(lambda x=x: net(x), repeat, device=device)
            row = {"size": size, "batch": batch, **timing, "images_per_s": 1000 * batch / timing["median_ms"]}
            rows.append(row)
            ms, ips = timing["median_ms"], row["images_per_s"]
            print(f"{model} {size} batch {batch} {dtype}: {ms:.1f} ms ({ips:.2f} img/s)")
    report = {
        "benchmark": "model_latency",
        "model": model,
        "parameters": sum(p.numel() for p in net.parameters()),
        "dtype": dtype,
        "channels_last": channels_last,
        "env": environment(device),
        "rows": rows,
    }
    write_report(out, report)


if __name__ == "__main__":
    typer.run(main)
