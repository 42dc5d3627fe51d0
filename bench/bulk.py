"""Bulk throughput: ``pose batch`` against the ``pose predict`` loop, DataLoader workers, and Ray on one machine.

Every configuration runs the same synthetic scenes with the embedded model, in this process, end to end
(model load, decoding, forward, grouping, writing), into a fresh output folder. Within a round the predict
loop and each bulk configuration run one after another, so a ratio compares runs seconds apart on the same
(possibly shared) machine; the report keeps every round, its load average and the median.

    python -m bench.bulk --out bench/results/bulk_cpu.json --markdown docs/performance.md
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from bench.common import environment, write_report
from pose.bulk import BulkOptions, RayOptions, run_batch
from pose.config import DEFAULT_MODEL
from pose.data.synthetic import SceneConfig, write_dataset

ROOT = Path(__file__).resolve().parents[1]
TABLE_START = "<!-- bulk table: python -m bench.bulk --markdown docs/performance.md -->"
TABLE_END = "<!-- end of bulk table -->"

app = typer.Typer(add_completion=False)


def _predict_loop(images: Path, out: Path) -> float:
    """The ``pose predict`` command as a user runs it, called in-process; seconds."""
    from pose.cli import predict

    start = time.perf_counter()
    predict([images], model=DEFAULT_MODEL, weights=None, out=out, overlay=False, flip=None, scales=None)
    return time.perf_counter() - start


def _bulk(images: Path, out: Path, batch_size: int, workers: int, ray: RayOptions | None = None) -> dict[str, Any]:
    start = time.perf_counter()
    options = BulkOptions(batch_size=batch_size, workers=workers, progress=False)
    summary = run_batch([str(images)], out, options=options, ray=ray)
    return {"seconds": time.perf_counter() - start, **summary.extra}


def _rate(n: int, seconds: float) -> float:
    return round(n / seconds, 3)


def _start_ray(cpus: int) -> float:
    import ray

    start = time.perf_counter()
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)  # workers import this checkout
    env = {"env_vars": {"PYTHONPATH": path}}
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, runtime_env=env)
    return time.perf_counter() - start


def measure(
    images: int, rounds: int, batch_size: int, workers: list[int], ray_actors: list[tuple[int, int]], work: Path
) -> dict[str, Any]:
    """Rows of images/s per configuration and round, with the predict loop of the same round beside them."""
    folder = work / "scenes"
    write_dataset(folder, images, seed=0, config=SceneConfig())
    image_dir = folder / "images"
    # One slot more than the cores: the replicas take every core, the decoding tasks need a slot beside them.
    ray_start = _start_ray((os.cpu_count() or 1) + 1) if ray_actors else None
    rows: list[dict[str, Any]] = []
    for r in range(rounds):
        load = os.getloadavg()[0]
        loop_s = _predict_loop(image_dir, work / f"predict{r}")
        rows.append({"round": r, "config": "pose predict loop", "images_per_s": _rate(images, loop_s), "load": load})
        configs: list[tuple[str, int, RayOptions | None]] = [(f"pose batch, workers {w}", w, None) for w in workers]
        for a, c in ray_actors:
            configs.append((f"pose batch --ray, {a} actor(s) x {c} CPU", 0, RayOptions(actors=a, cpus_per_actor=c)))
        for name, w, ray in configs:
            out = work / f"bulk{r}"
            shutil.rmtree(out, ignore_errors=True)
            run = _bulk(image_dir, out, batch_size, w, ray)
            rate = _rate(images, run.pop("seconds"))
            ratio = round(rate * loop_s / images, 2)
            rows.append({"round": r, "config": name, "images_per_s": rate, "vs_loop": ratio, "load": load, **run})
            print(f"round {r}: {name}: {rate} images/s ({rows[-1]['vs_loop']}x the loop)", flush=True)
    return {"ray_init_s": ray_start, "rows": rows}


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median images/s and median ratio to the same round's loop, per configuration."""
    names = list(dict.fromkeys(r["config"] for r in rows))
    table = []
    for name in names:
        mine = [r for r in rows if r["config"] == name]
        entry = {"config": name, "images_per_s": statistics.median(r["images_per_s"] for r in mine)}
        if "vs_loop" in mine[0]:
            entry["vs_loop"] = statistics.median(r["vs_loop"] for r in mine)
        table.append(entry)
    return table


def markdown(report: dict[str, Any]) -> str:
    lines = ["| run | images/s (median) | vs the predict loop (same round) |", "|---|---|---|"]
    for row in report["summary"]:
        ratio = f"{row['vs_loop']:.2f}x" if "vs_loop" in row else "1.00x"
        lines.append(f"| {row['config']} | {row['images_per_s']:.2f} | {ratio} |")
    return "\n".join(lines) + "\n"


def _write_table(path: Path, table: str) -> None:
    text = path.read_text()
    if TABLE_START not in text or TABLE_END not in text:
        raise SystemExit(f"{path} has no bulk table markers ({TABLE_START} ... {TABLE_END})")
    head, rest = text.split(TABLE_START, 1)
    path.write_text(head + TABLE_START + "\n" + table + TABLE_END + rest.split(TABLE_END, 1)[1])


@app.command()
def main(
    out: Annotated[Path, typer.Option(help="JSON report")] = ROOT / "bench" / "results" / "bulk_cpu.json",
    images: Annotated[int, typer.Option(min=1, help="synthetic 256x256 scenes")] = 2000,
    rounds: Annotated[int, typer.Option(min=1, help="repetitions of every configuration")] = 2,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    workers: Annotated[list[int] | None, typer.Option(help="DataLoader workers to sweep")] = None,
    ray: Annotated[bool, typer.Option(help="also run on a local Ray (needs the cluster extra)")] = True,
    markdown_file: Annotated[Path | None, typer.Option("--markdown", help="rewrite the bulk table here")] = None,
) -> None:
    sweep = workers if workers is not None else [0, 1, 2]
    cpus = os.cpu_count() or 1
    ray_actors = [(1, cpus), (cpus, 1)] if ray and cpus > 1 else [(1, cpus)] if ray else []
    with tempfile.TemporaryDirectory(prefix="bench-bulk-") as tmp:
        measured = measure(images, rounds, batch_size, sweep, ray_actors, Path(tmp))
    report = {
        "environment": {**environment("cpu"), "cpus": cpus},
        "setup": {
            "images": images,
            "size": "256x256",
            "rounds": rounds,
            "batch_size": batch_size,
            "model": DEFAULT_MODEL.name,
            "workers": sweep,
        },
        **measured,
        "summary": summarize(measured["rows"]),
    }
    write_report(out, report)
    table = markdown(report)
    print(table)
    if markdown_file is not None:
        _write_table(markdown_file, table)


if __name__ == "__main__":
    app()
