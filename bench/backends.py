"""Network latency per backend on the same inputs: torch eager vs ONNX Runtime (portable graph).

python -m bench.backends --out bench/results/backends_cpu.json
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import torch
import typer

from bench.common import environment, time_call, write_report
from export.onnx_export import export_onnx
from pose.config import load_model_config
from pose.models.hrnet import create_model
from pose.runtimes.onnxruntime_backend import OnnxRuntimeBackend

ROOT = Path(__file__).resolve().parents[1]


def main(
    model: str = "hrnet_w32_coco_512",
    size: Annotated[str, typer.Option(help="HxW input")] = "512x512",
    batches: Annotated[list[int], typer.Option(help="batch sizes")] = [1, 4],  # noqa: B006
    repeat: int = 3,
    onnx_path: Annotated[Path | None, typer.Option("--onnx", help="reuse an exported portable graph")] = None,
    out: Annotated[Path | None, typer.Option(help="JSON report")] = None,
) -> None:
    cfg = load_model_config(ROOT / "model_repo" / model)
    torch.manual_seed(0)
    net = create_model(cfg).eval()
    h, w = (int(v) for v in size.split("x"))
    path = onnx_path or Path(tempfile.mkdtemp()) / f"{model}.onnx"
    if not path.is_file():
        export_onnx(net, path, "portable", (h, w))
    ort = OnnxRuntimeBackend(path, cfg.keypoints.num_keypoints)
    rows = []
    for batch in batches:
        x = torch.randn(batch, 3, h, w)
        with torch.inference_mode():
            eager = time_call(lambda x=x: net(x), repeat)
        onnx = time_call(lambda x=x: ort(x), repeat)
        rows.append(
            {
                "batch": batch,
                "torch_eager_ms": eager["median_ms"],
                "onnxruntime_ms": onnx["median_ms"],
                "speedup": eager["median_ms"] / onnx["median_ms"],
            }
        )
        print(
            f"{model} {size} batch {batch}: torch {eager['median_ms']:.0f} ms, onnxruntime {onnx['median_ms']:.0f} ms "
            f"(x{rows[-1]['speedup']:.2f})"
        )
    write_report(out, {"benchmark": "backends", "model": model, "size": size, "env": environment("cpu"), "rows": rows})


if __name__ == "__main__":
    typer.run(main)
