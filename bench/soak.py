"""Soak: the service's memory and liveness over minutes of mixed traffic, large and refused bodies included.

It starts ``python -m service`` with the embedded model and repeats one cycle of traffic for ``--minutes``:
single images from a few concurrent clients, a multipart request of 8 large images, a panorama, a JSON body with
1.7 million empty images (refused before parsing), a body over the size limit (413), an image whose header
claims too many pixels (413), a file that is no image (415) and a few seconds of a live stream. All the
while it polls ``/health/live`` every 50 ms and samples the process's RSS every second. After the traffic
it waits idle, then reports:

- RSS after warm-up (before any traffic), its peak, its value once idle after the last burst, and the
  slope of a least-squares line through the samples after the first cycle (MB per minute; ~0 when
  nothing accumulates);
- ``/health/live`` latency percentiles and maximum, overall and while a large body was in flight.

    python -m bench.soak --minutes 10 --out bench/results/soak_cpu.json
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import time
import zlib
from pathlib import Path
from typing import Annotated, Any

import cv2
import httpx
import numpy as np
import typer

from bench.common import drawn_scenes, environment, start_service, write_report
from bench.stream import clip_jpegs, rss_mb, run_stream
from pose.config import DEFAULT_MODEL

LARGE_SIZE = (1280, 1920)  # (H, W) of the multipart request's images
WIDE_SIZE = (256, 2000)  # (H, W) of a panorama: a network input far wider than any warm-up ran


def bodies() -> dict[str, Any]:
    """Every request body of one cycle, made once."""
    scenes = drawn_scenes(8, (480, 640))
    small = [cv2.imencode(".jpg", cv2.cvtColor(im, cv2.COLOR_RGB2BGR))[1].tobytes() for im in scenes]
    large = [cv2.imencode(".jpg", cv2.resize(im, LARGE_SIZE[::-1]))[1].tobytes() for im in scenes]
    many_empty = b'{"images":[' + b",".join([b'{"data":""}'] * 1_700_000) + b"]}"  # 19.5 MiB
    png = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    ihdr = b"IHDR" + (20_000).to_bytes(4, "big") * 2 + png[24:29]  # the header claims 20000 x 20000 pixels
    bomb = png[:12] + ihdr + zlib.crc32(ihdr).to_bytes(4, "big") + png[33:]
    return {
        "small": small,
        "large": large,
        "many_empty": many_empty,
        "bomb": bomb,
        "over_limit": b"\xff\xd8\xff" + bytes(21 * 2**20),
        "wide": cv2.imencode(".jpg", cv2.resize(scenes[0], WIDE_SIZE[::-1]))[1].tobytes(),
    }


async def poll_liveness(url: str, samples: list[tuple[float, float]], start: float) -> None:
    """``/health/live`` every 50 ms on its own connection: (time, latency) pairs."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        while True:
            sent = time.perf_counter()
            await client.get("/health/live")
            samples.append((sent - start, time.perf_counter() - sent))
            await asyncio.sleep(max(0.0, 0.05 - (time.perf_counter() - sent)))


async def sample_memory(pid: int, samples: list[tuple[float, float]], start: float) -> None:
    while True:
        samples.append((time.perf_counter() - start, rss_mb(pid)))
        await asyncio.sleep(1.0)


async def cycle(
    client: httpx.AsyncClient, url: str, data: dict[str, Any], large_windows: list[tuple[float, float]], start: float
) -> dict[str, int]:
    """One round of the mixed traffic; the statuses it got, by kind."""
    jpeg = {"content-type": "image/jpeg"}
    statuses: dict[str, int] = {}

    async def post(kind: str, large: bool = False, **kwargs: Any) -> None:
        began = time.perf_counter() - start
        try:
            r = await client.post("/v1/pose", timeout=120, **kwargs)
            statuses[f"{kind} {r.status_code}"] = statuses.get(f"{kind} {r.status_code}", 0) + 1
        except httpx.HTTPError as err:  # an over-limit body may be cut off while it is still being sent
            statuses[f"{kind} {type(err).__name__}"] = statuses.get(f"{kind} {type(err).__name__}", 0) + 1
        if large:
            large_windows.append((began, time.perf_counter() - start))

    await asyncio.gather(*(post("image", content=im, headers=jpeg) for im in data["small"]))
    files = [("image", (f"{i}.jpg", im, "image/jpeg")) for i, im in enumerate(data["large"])]
    await post("multipart", large=True, files=files)
    await post("many_empty_json", large=True, content=data["many_empty"], headers={"content-type": "application/json"})
    await post("over_limit", large=True, content=data["over_limit"], headers=jpeg)
    await post("pixel_bomb", content=data["bomb"], headers={"content-type": "image/png"})
    await post("wide", content=data["wide"], headers=jpeg)
    await post("not_an_image", content=b"plain text, no picture" * 10, headers=jpeg)
    ws_url = url.replace("http://", "ws://", 1) + "/v1/stream"
    log = await run_stream(ws_url, clip_jpegs(0, frames=10), fps=5.0, seconds=3.0, start=time.perf_counter())
    statuses["stream frames answered"] = log.answered
    return statuses


def _quantiles_ms(values: list[float]) -> dict[str, float]:
    if len(values) < 2:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan"), "n": len(values)}
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50_ms": 1000 * q[49], "p99_ms": 1000 * q[98], "max_ms": 1000 * max(values), "n": len(values)}


async def soak(url: str, pid: int, minutes: float, idle_s: float) -> dict[str, Any]:
    data = bodies()
    start = time.perf_counter()
    rss: list[tuple[float, float]] = []
    live: list[tuple[float, float]] = []
    large_windows: list[tuple[float, float]] = []
    await asyncio.sleep(2.0)
    warm_rss = rss_mb(pid)
    tasks = [
        asyncio.ensure_future(sample_memory(pid, rss, start)),
        asyncio.ensure_future(poll_liveness(url, live, start)),
    ]
    cycles: list[dict[str, int]] = []
    first_cycle_end = None
    try:
        async with httpx.AsyncClient(base_url=url, limits=httpx.Limits(max_connections=None)) as client:
            while time.perf_counter() - start < 60 * minutes:
                cycles.append(await cycle(client, url, data, large_windows, start))
                first_cycle_end = first_cycle_end or time.perf_counter() - start
        traffic_end = time.perf_counter() - start
        await asyncio.sleep(idle_s)
    finally:
        for task in tasks:
            task.cancel()
    idle_rss = rss_mb(pid)
    steady = np.array([(t, mb) for t, mb in rss if first_cycle_end is not None and first_cycle_end <= t <= traffic_end])
    slope = float(np.polyfit(steady[:, 0] / 60, steady[:, 1], 1)[0]) if len(steady) >= 3 else float("nan")
    during_large = [lat for t, lat in live if any(a <= t <= b for a, b in large_windows)]
    totals: dict[str, int] = {}
    for c in cycles:
        for k, v in c.items():
            totals[k] = totals.get(k, 0) + v
    return {
        "minutes": minutes,
        "cycles": len(cycles),
        "statuses": dict(sorted(totals.items())),
        "rss_mb": {
            "after_warm_up": warm_rss,
            "peak": max(mb for _, mb in rss),
            "idle_after": idle_rss,
            "idle_vs_warm_up": idle_rss / warm_rss - 1,
            "slope_mb_per_min": slope,
            "samples": [[round(t, 1), round(mb, 1)] for t, mb in rss[::5]],
        },
        "liveness": {
            "all": _quantiles_ms([lat for _, lat in live]),
            "during_large_bodies": _quantiles_ms(during_large),
            "slowest": [[round(t, 2), round(1000 * lat, 1)] for t, lat in sorted(live, key=lambda x: -x[1])[:5]],
            "large_bodies": [[round(a, 2), round(b, 2)] for a, b in large_windows[:12]],
        },
    }


def main(
    minutes: Annotated[float, typer.Option(help="how long the traffic lasts")] = 10.0,
    idle_s: Annotated[float, typer.Option(help="idle time after the traffic, before the last RSS reading")] = 20.0,
    device: str = "cpu",
    out: Annotated[Path | None, typer.Option(help="JSON report")] = None,
) -> None:
    url, proc = start_service(
        {
            "POSE_MODEL": str(DEFAULT_MODEL),
            "POSE_DEVICE": device,
            "POSE_MAX_BATCH_SIZE": "8",
            "POSE_API_KEY": None,
            "POSE_API_KEY_FILE": None,
        }
    )
    load_before = os.getloadavg()
    try:
        report = asyncio.run(soak(url, proc.pid, minutes, idle_s))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    report |= {"load_average_before": list(load_before), "load_average_after": list(os.getloadavg())}
    mem, live = report["rss_mb"], report["liveness"]
    print(
        f"{report['cycles']} cycles in {minutes:g} min: RSS {mem['after_warm_up']:.0f} MB after warm-up, peak "
        f"{mem['peak']:.0f}, idle after {mem['idle_after']:.0f} ({100 * mem['idle_vs_warm_up']:+.0f}%), slope "
        f"{mem['slope_mb_per_min']:+.1f} MB/min\n/health/live p50 {live['all']['p50_ms']:.1f} ms p99 "
        f"{live['all']['p99_ms']:.1f} max {live['all']['max_ms']:.0f}; during large bodies p99 "
        f"{live['during_large_bodies']['p99_ms']:.1f} max {live['during_large_bodies']['max_ms']:.0f}\n"
        f"statuses {report['statuses']}"
    )
    write_report(out, {"benchmark": "soak", "model": str(DEFAULT_MODEL), "env": environment(device), **report})


if __name__ == "__main__":
    typer.run(main)
