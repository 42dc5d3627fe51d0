"""The overload curve: goodput, wasted work, latency and refusals at 0.5x to 4x of measured capacity.

For each max batch size it starts ``python -m service`` with the embedded model, measures capacity
(delivered images per second with twice a batch of closed-loop clients), then offers open-loop traffic at
fractions and multiples of it: Poisson-timed ``POST /v1/pose`` requests of one drawn scene each, mixed
with live streams (``WS /v1/stream``) carrying a share of the frames. Every request carries the same
deadline (``X-Request-Timeout``), a few times what the service estimates a full batch takes (so the curve
reads the same on a CPU and a GPU); a client gives up a second after it. Per level it reports:

- goodput: answers received within the deadline per second (images and stream frames);
- wasted images: computed by the service (``pose_batch_size`` sum) but never received by a client;
- p50/p99 latency of the answers received, and refusals by status and error code.

The bar: at 2x and 4x capacity goodput stays at 90% or more of the 1x goodput, at most 2% of the computed
images are wasted, and no request the service started ends in a 504.

    python -m bench.overload --out bench/results/overload_cpu.json
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import re
import signal
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import cv2
import httpx
import typer
from websockets.asyncio.client import connect

from bench.common import drawn_scenes, environment, start_service, write_report
from bench.stream import StreamLog, clip_jpegs
from pose.config import DEFAULT_MODEL, load_model_config
from service.batch_cost import work_units
from service.options import RunOptions

FACTORS = (0.5, 1.0, 2.0, 4.0)
SCENE_SIZE = (480, 640)  # (H, W) of the request images


@dataclass(frozen=True)
class Outcome:
    """One request as its client saw it."""

    status: int  # HTTP status; 0: the client gave up (its own time-out) or lost the connection
    code: str  # the error body's code ("" on 200)
    latency_s: float


def scene_jpegs(n: int = 8) -> list[bytes]:
    """Request bodies: drawn scenes the embedded model finds people in."""
    images = drawn_scenes(n, SCENE_SIZE)
    return [cv2.imencode(".jpg", cv2.cvtColor(im, cv2.COLOR_RGB2BGR))[1].tobytes() for im in images]


def poster(client: httpx.AsyncClient, bodies: list[bytes], deadline_s: float) -> Callable[[int], Awaitable[Outcome]]:
    """A request of body ``i`` with the deadline header; the client waits a second past the deadline."""

    async def post(i: int) -> Outcome:
        start = time.perf_counter()
        try:
            r = await client.post(
                "/v1/pose",
                content=bodies[i % len(bodies)],
                headers={"content-type": "image/jpeg", "x-request-timeout": f"{deadline_s:g}"},
                timeout=deadline_s + 1.0,
            )
        except httpx.HTTPError:
            return Outcome(0, "client_gave_up", time.perf_counter() - start)
        code = "" if r.status_code == 200 else r.json().get("error", {}).get("code", "")
        return Outcome(r.status_code, code, time.perf_counter() - start)

    return post


async def open_loop(send: Callable[[int], Awaitable[Outcome]], rate: float, seconds: float, seed: int) -> list[Outcome]:
    """Requests at Poisson-timed arrivals of ``rate`` per second for ``seconds``, whatever the answers do."""
    rng = random.Random(seed)
    start, at, tasks = time.perf_counter(), 0.0, []
    while (at := at + rng.expovariate(rate)) < seconds:
        await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
        tasks.append(asyncio.ensure_future(send(len(tasks))))
    return list(await asyncio.gather(*tasks))


async def closed_loop(send: Callable[[int], Awaitable[Outcome]], clients: int, seconds: float) -> list[Outcome]:
    """``clients`` clients sending back to back for ``seconds``: the service's capacity. A refused client
    waits a moment before it sends again, as a well-behaved client does, rather than flood the service
    with requests it has just refused."""
    outcomes: list[Outcome] = []
    stop = time.perf_counter() + seconds

    async def client(k: int) -> None:
        while time.perf_counter() < stop:
            outcomes.append(outcome := await send(k))
            if outcome.status == 429:
                await asyncio.sleep(0.2)

    await asyncio.gather(*(client(k) for k in range(clients)))
    return outcomes


def _quantile_ms(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] * 1000 if values else float("nan")
    return 1000 * statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def summarize(outcomes: list[Outcome], streams: list[StreamLog], seconds: float, deadline_s: float) -> dict[str, Any]:
    """Goodput, latency of what was delivered and refusals by code, as the clients saw them."""
    delivered = [o.latency_s for o in outcomes if o.status == 200]
    frames = [lat for log in streams for lat in log.latency_s]
    in_time = sum(lat <= deadline_s for lat in delivered + frames)
    refusals = Counter(f"{o.status} {o.code}" for o in outcomes if o.status != 200)
    frames_dropped = sum(log.dropped for log in streams)
    return {
        "requests": len(outcomes),
        "frames_sent": sum(log.sent for log in streams),
        "offered_per_s": (len(outcomes) + sum(log.sent for log in streams)) / seconds,
        "delivered": len(delivered) + len(frames),
        "goodput_per_s": in_time / seconds,
        "late": len(delivered) + len(frames) - in_time,
        "p50_ms": _quantile_ms(delivered + frames, 50),
        "p99_ms": _quantile_ms(delivered + frames, 99),
        "refusals": dict(sorted(refusals.items())),
        "frames_dropped": frames_dropped,
        "frame_errors": sum(len(log.errors) for log in streams),
        "gateway_timeouts": sum(o.status == 504 for o in outcomes),
    }


_SAMPLE = re.compile(r"^(pose_[a-z_]+)(\{[^}]*\})? ([0-9.eE+-]+|NaN)$")


def scrape(url: str) -> dict[str, float]:
    """The service's counters that account for work: computed, delivered, wasted and shed images."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    values: dict[str, float] = {}
    for line in text.splitlines():
        if m := _SAMPLE.match(line):
            values[m[1] + (m[2] or "")] = float(m[3])
    return values


def work_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    shed = {
        r: delta(f'pose_shed_requests_total{{reason="{r}"}}') for r in ("queue_full", "deadline", "expired", "pixels")
    }
    return {
        "computed_images": delta("pose_batch_size_sum"),
        "batches": delta("pose_batch_size_count"),
        "wasted_images_service": delta('pose_wasted_images_total{reason="client_gone"}')
        + delta('pose_wasted_images_total{reason="shutdown"}'),
        "shed": shed,
    }


async def wait_idle(url: str, timeout_s: float = 60) -> None:
    """Until nothing waits or computes (the previous level's leftovers must not count in the next)."""
    stop = time.perf_counter() + timeout_s
    async with httpx.AsyncClient(base_url=url) as client:
        while time.perf_counter() < stop:
            text = (await client.get("/metrics")).text
            if "pose_queue_depth 0.0" in text and "pose_inflight_requests 0.0" in text:
                return
            await asyncio.sleep(0.5)


async def stream_frames(ws_url: str, frames: list[bytes], fps: float, seconds: float, deadline_s: float) -> StreamLog:
    """One camera at ``fps`` for ``seconds``; answers are awaited until a second past the last deadline, then
    the connection closes (a frame with no answer by then was dropped by the service)."""
    log, sent_at = StreamLog(), {}
    async with connect(ws_url, max_size=2**22) as ws:
        await ws.recv()  # the ready message

        async def receive() -> None:
            async for raw in ws:
                m = json.loads(raw)
                if m["type"] == "poses":
                    log.answered += 1
                    log.latency_s.append(time.perf_counter() - sent_at[m["seq"]])
                else:
                    log.errors.append(m["code"])

        receiver = asyncio.ensure_future(receive())
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            sent_at[log.sent] = time.perf_counter()
            await ws.send(frames[log.sent % len(frames)])
            log.sent += 1
            await asyncio.sleep(max(0.0, start + log.sent / fps - time.perf_counter()))
        await asyncio.sleep(deadline_s + 1.0)
        receiver.cancel()
    log.dropped = log.sent - log.answered - len(log.errors)
    return log


async def offer(
    url: str, bodies: list[bytes], rate: float, seconds: float, deadline_s: float, stream_share: float, seed: int
) -> tuple[list[Outcome], list[StreamLog]]:
    """Open-loop images at ``rate * (1 - stream_share)`` and two streams carrying the rest."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
    ws_url = url.replace("http://", "ws://", 1) + "/v1/stream"
    n_streams = 2 if stream_share > 0 else 0
    fps = rate * stream_share / max(1, n_streams)
    async with httpx.AsyncClient(base_url=url, limits=limits) as client:
        images = open_loop(poster(client, bodies, deadline_s), rate * (1 - stream_share), seconds, seed)
        streams = [stream_frames(ws_url, clip_jpegs(seed + k), fps, seconds, deadline_s) for k in range(n_streams)]
        outcomes, *logs = await asyncio.gather(images, *streams)
    return outcomes, list(logs)


def full_batch_seconds(url: str, batch: int) -> float:
    """What the service estimates a full batch of the request images takes (its warm-up measured it)."""
    config = load_model_config(DEFAULT_MODEL)
    run = RunOptions(config.test.flip, tuple(config.test.scales))
    units = work_units([SCENE_SIZE[::-1]] * batch, run, config.input.size)
    cost = scrape(url)
    return cost['pose_batch_cost_seconds{part="fixed"}'] + units * cost['pose_batch_cost_seconds{part="per_unit"}']


def serve(batch: int, device: str, timeout_s: float) -> tuple[str, subprocess.Popen]:
    return start_service(
        {
            "POSE_MODEL": str(DEFAULT_MODEL),
            "POSE_DEVICE": device,
            "POSE_MAX_BATCH_SIZE": str(batch),
            "POSE_REQUEST_TIMEOUT_S": f"{timeout_s:g}",  # streams' deadline; images also send X-Request-Timeout
            "POSE_API_KEY": None,
            "POSE_API_KEY_FILE": None,
        }
    )


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)


def run_batch_size(
    batch: int, deadline_batches: float, seconds: float, capacity_s: float, stream_share: float, device: str
) -> dict[str, Any]:
    """One service, its capacity, then each load factor; every request's deadline is ``deadline_batches``
    full batches (at least a second), so the curve means the same on a slow CPU and a fast GPU. A first
    start only learns how long a full batch takes (its warm-up measures it)."""
    url, proc = serve(batch, device, 600)
    try:
        batch_s = full_batch_seconds(url, batch)
    finally:
        stop(proc)
    deadline_s = max(1.0, deadline_batches * batch_s)
    print(f"max batch {batch}: a full batch takes {batch_s:.2f} s, deadline {deadline_s:.2f} s")
    url, proc = serve(batch, device, deadline_s)
    bodies = scene_jpegs()
    levels = []
    try:

        async def capacity() -> float:
            async with httpx.AsyncClient(base_url=url, limits=httpx.Limits(max_connections=None)) as client:
                outcomes = await closed_loop(poster(client, bodies, deadline_s), 2 * batch, capacity_s)
            return sum(o.status == 200 for o in outcomes) / capacity_s

        rate = asyncio.run(capacity())
        print(f"max batch {batch}: capacity {rate:.1f} images/s")
        for i, factor in enumerate(FACTORS):
            asyncio.run(wait_idle(url))
            before, load = scrape(url), os.getloadavg()[0]
            outcomes, logs = asyncio.run(offer(url, bodies, factor * rate, seconds, deadline_s, stream_share, i))
            asyncio.run(wait_idle(url))
            work = work_delta(before, scrape(url))
            row = {"factor": factor, **summarize(outcomes, logs, seconds, deadline_s), **work}
            row["wasted_images"] = max(0.0, work["computed_images"] - row["delivered"])
            row["wasted_fraction"] = row["wasted_images"] / work["computed_images"] if work["computed_images"] else 0.0
            row["load_average_1m"] = load
            levels.append(row)
            print(
                f"  {factor:g}x: offered {row['offered_per_s']:.1f}/s goodput {row['goodput_per_s']:.1f}/s "
                f"p50 {row['p50_ms']:.0f} ms p99 {row['p99_ms']:.0f} ms computed {work['computed_images']:.0f} "
                f"wasted {row['wasted_images']:.0f} late {row['late']} refusals {row['refusals']} "
                f"dropped frames {row['frames_dropped']}"
            )
    finally:
        stop(proc)
    return {
        "max_batch_size": batch,
        "full_batch_s": batch_s,
        "deadline_s": deadline_s,
        "capacity_per_s": rate,
        "levels": levels,
        "bar": check_bar(levels),
    }


def check_bar(levels: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's bar on one curve: goodput held past saturation, little waste, no 504 for started work."""
    by_factor = {row["factor"]: row for row in levels}
    base = by_factor[1.0]["goodput_per_s"]
    held = {f"{f:g}x": by_factor[f]["goodput_per_s"] / base if base else math.nan for f in (2.0, 4.0)}
    wasted = max(row["wasted_fraction"] for row in levels)
    timeouts = sum(row["gateway_timeouts"] for row in levels)
    return {
        "goodput_vs_1x": held,
        "max_wasted_fraction": wasted,
        "gateway_timeouts": timeouts,
        "passed": all(v >= 0.9 for v in held.values()) and wasted <= 0.02 and timeouts == 0,
    }


def main(
    batch_sizes: Annotated[list[int], typer.Option(help="POSE_MAX_BATCH_SIZE values, one service each")] = [8, 16],  # noqa: B006
    deadline_batches: Annotated[
        float, typer.Option(help="every request's deadline (X-Request-Timeout), in full-batch times")
    ] = 4.0,
    seconds: Annotated[float, typer.Option(help="how long each load level lasts")] = 20.0,
    capacity_s: Annotated[float, typer.Option(help="how long capacity is measured")] = 15.0,
    stream_share: Annotated[float, typer.Option(help="fraction of the offered images sent as stream frames")] = 0.2,
    device: str = "cpu",
    out: Annotated[Path | None, typer.Option(help="JSON report")] = None,
) -> None:
    curves = [run_batch_size(b, deadline_batches, seconds, capacity_s, stream_share, device) for b in batch_sizes]
    report = {
        "benchmark": "overload",
        "model": str(DEFAULT_MODEL),
        "deadline_batches": deadline_batches,
        "seconds_per_level": seconds,
        "stream_share": stream_share,
        "env": environment(device),
        "cpus": os.cpu_count(),
        "curves": curves,
    }
    write_report(out, report)
    for curve in curves:
        print(f"max batch {curve['max_batch_size']}: {curve['bar']}")
    if not all(curve["bar"]["passed"] for curve in curves):
        raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(main)
