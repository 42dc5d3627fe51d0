"""Stream load test: concurrent ``WS /v1/stream`` cameras on loopback, each sending at a fixed frame rate.

Every stream sends JPEG frames of a panning drawn scene at ``--fps`` whatever the service manages, like a
camera that never waits. It records each answer's end-to-end latency (sent to answered, client clock),
the service's own per-frame latency, the frames the service dropped, and samples the service's resident
memory while the load runs, so a queue that grows or memory that leaks shows. Every frame must be
accounted for: answered, reported dropped, or answered with an error.

    python -m bench.stream --out bench/results/stream_cpu.json
    python -m bench.stream --streams 8 --fps 15 --seconds 20 --url http://127.0.0.1:8000 --pid 1234
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import cv2
import numpy as np
import typer
from websockets.asyncio.client import connect

from bench.common import environment, start_service, write_report
from pose.config import DEFAULT_MODEL
from pose.data.clip import panning_clip

FRAME_SIZE = (360, 480)  # (H, W) of the frames sent: a small webcam


def clip_jpegs(seed: int, frames: int = 30) -> list[bytes]:
    """One stream's frames as JPEG bytes (the clip loops)."""
    clip = panning_clip(seed, frames, size=FRAME_SIZE, step=2)
    return [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes() for f in clip]


def rss_mb(pid: int) -> float:
    """The process's resident memory now (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class StreamLog:
    """What one stream sent and got back."""

    sent: int = 0
    answered: int = 0
    dropped: int = 0
    errors: list[str] = field(default_factory=list)
    sent_at: list[float] = field(default_factory=list)  # seconds since the run started, per answered frame
    latency_s: list[float] = field(default_factory=list)  # client: frame sent to answer received
    server_ms: list[float] = field(default_factory=list)  # service: frame received to answer sent
    batch_sizes: list[int] = field(default_factory=list)  # images in the batch each answered frame rode in
    track_ids: set[int] = field(default_factory=set)
    last_seq: int = -1
    close: str | None = None


async def run_stream(ws_url: str, frames: list[bytes], fps: float, seconds: float, start: float) -> StreamLog:
    """Send at ``fps`` for ``seconds``, then wait for the answer to the last frame (never the one dropped)."""
    log = StreamLog()
    async with connect(ws_url, max_size=2**22) as ws:
        ready = json.loads(await ws.recv())
        if ready.get("type") != "ready":
            raise RuntimeError(f"expected the ready message, got {ready}")
        done = asyncio.Event()

        async def receive() -> None:
            async for raw in ws:
                m = json.loads(raw)
                now = time.perf_counter()
                log.dropped += m["dropped"]
                log.last_seq = m["seq"]
                if m["type"] == "error":
                    log.errors.append(f"{m['code']}: {m['message']}")
                else:
                    log.answered += 1
                    log.sent_at.append(m["time"] - start)
                    log.latency_s.append(now - m["time"])
                    log.server_ms.append(m["latency_ms"])
                    log.batch_sizes.append(m["batch_size"])
                    log.track_ids.update(p["track_id"] for p in m["people"])
                if done.is_set() and log.last_seq == log.sent - 1:
                    return

        receiver = asyncio.ensure_future(receive())
        next_at = time.perf_counter()
        while (now := time.perf_counter()) - start < seconds and not receiver.done():
            await ws.send(json.dumps({"time": now}))
            await ws.send(frames[log.sent % len(frames)])
            log.sent += 1
            next_at += 1 / fps
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        done.set()
        try:
            await asyncio.wait_for(receiver, 60)
        except TimeoutError:
            log.errors.append("no answer to the last frame within 60 s")
        if ws.close_code is not None and ws.close_code != 1000:
            log.close = f"{ws.close_code} {ws.close_reason}"
    return log


async def sample_rss(pid: int, every_s: float, samples: list[tuple[float, float]], start: float) -> None:
    while True:
        samples.append((time.perf_counter() - start, rss_mb(pid)))
        await asyncio.sleep(every_s)


def _quantiles_ms(values: list[float], scale: float = 1000.0) -> dict[str, float]:
    if len(values) < 2:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50_ms": scale * q[49], "p99_ms": scale * q[98], "max_ms": scale * max(values)}


def latency_slope(logs: list[StreamLog], after_s: float) -> float:
    """Seconds of extra latency per second of run (least squares over frames sent after ``after_s``): ~0
    when the queue is bounded, 1 - (answer rate / send rate) when frames pile up instead."""
    pairs = np.array([(t, lat) for log in logs for t, lat in zip(log.sent_at, log.latency_s, strict=True)])
    if len(pairs) < 3:
        return float("nan")
    steady = pairs[pairs[:, 0] >= after_s]
    steady = steady if len(steady) >= 3 and np.ptp(steady[:, 0]) > 0 else pairs
    return float(np.polyfit(steady[:, 0], steady[:, 1], 1)[0])


def summarize(logs: list[StreamLog], rss: list[tuple[float, float]], warmup_s: float, seconds: float) -> dict:
    sent = sum(log.sent for log in logs)
    answered = sum(log.answered for log in logs)
    dropped = sum(log.dropped for log in logs)
    errors = [e for log in logs for e in log.errors]
    steady = [mb for t, mb in rss if t >= warmup_s] or [mb for _, mb in rss] or [float("nan")]
    quarter = max(1, len(steady) // 4)
    first, last = statistics.median(steady[:quarter]), statistics.median(steady[-quarter:])
    return {
        "frames_sent": sent,
        "frames_answered": answered,
        "frames_dropped": dropped,
        "frame_errors": len(errors),
        "errors": errors[:10],
        "closes": [log.close for log in logs if log.close],
        "unaccounted": sent - answered - dropped - len(errors),
        "drop_rate": dropped / sent if sent else float("nan"),
        "answered_fps_per_stream": answered / len(logs) / seconds,
        "latency": _quantiles_ms([lat for log in logs for lat in log.latency_s]),
        "server_latency": _quantiles_ms([ms for log in logs for ms in log.server_ms], scale=1.0),
        "latency_slope_s_per_s": latency_slope(logs, warmup_s),
        "mean_batch_size": statistics.fmean(b for log in logs for b in log.batch_sizes) if answered else 0.0,
        "track_ids_per_stream": [len(log.track_ids) for log in logs],
        "rss_mb": {  # medians of the first and last quarter of the samples after warm-up: batches make spikes
            "first_quarter": first,
            "last_quarter": last,
            "max": max(steady),
            "growth": last - first,
            "samples": [[round(t, 1), round(mb, 1)] for t, mb in rss],
        },
    }


async def stream_load(
    url: str,
    pid: int | None,
    streams: int,
    fps: float,
    seconds: float,
    warmup_s: float = 3.0,
    options: dict[str, str] | None = None,
) -> dict[str, Any]:
    """``streams`` cameras at ``fps`` for ``seconds`` against the service at ``url`` (``pid``: its process,
    for memory samples; ``options``: the stream's query parameters); the summary of :func:`summarize` plus
    the load average before and after."""
    query = "?" + urlencode(options) if options else ""
    ws_url = url.replace("http://", "ws://", 1).replace("https://", "wss://", 1) + "/v1/stream" + query
    clips = [clip_jpegs(seed) for seed in range(streams)]
    load_before = os.getloadavg()
    rss: list[tuple[float, float]] = []
    start = time.perf_counter()
    sampler = asyncio.ensure_future(sample_rss(pid, 0.5, rss, start)) if pid is not None else None
    try:
        logs = await asyncio.gather(*(run_stream(ws_url, clip, fps, seconds, start) for clip in clips))
    finally:
        if sampler is not None:
            sampler.cancel()
    return {
        "streams": streams,
        "fps": fps,
        "seconds": seconds,
        "frame_size": list(FRAME_SIZE),
        "options": options or {},
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
        **summarize(list(logs), rss, warmup_s, seconds),
    }


def main(
    streams: Annotated[int, typer.Option(help="concurrent streams")] = 8,
    fps: Annotated[float, typer.Option(help="frames per second each stream sends")] = 15.0,
    seconds: Annotated[float, typer.Option(help="how long each stream sends")] = 20.0,
    queue_frames: Annotated[int, typer.Option(help="POSE_STREAM_QUEUE_FRAMES of the service started")] = 1,
    max_batch_size: Annotated[int, typer.Option(help="POSE_MAX_BATCH_SIZE of the service started")] = 8,
    flip: Annotated[bool | None, typer.Option(help="the streams' flip option (default: the model's)")] = None,
    device: str = "cpu",
    url: Annotated[str | None, typer.Option(help="use a running service instead of starting one")] = None,
    pid: Annotated[int | None, typer.Option(help="with --url: the service's process id, for memory samples")] = None,
    out: Annotated[Path | None, typer.Option(help="JSON report")] = None,
) -> None:
    proc = None
    if url is None:
        url, proc = start_service(
            {
                "POSE_MODEL": str(DEFAULT_MODEL),
                "POSE_DEVICE": device,
                "POSE_STREAM_QUEUE_FRAMES": str(queue_frames),
                "POSE_MAX_BATCH_SIZE": str(max_batch_size),
                "POSE_MAX_STREAMS": str(max(streams, 32)),
                "POSE_API_KEY": None,
                "POSE_API_KEY_FILE": None,
            }
        )
        pid = proc.pid
    try:
        options = {} if flip is None else {"flip": str(flip).lower()}
        report = asyncio.run(stream_load(url, pid, streams, fps, seconds, options=options))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=120)
    report |= {"queue_frames": queue_frames if proc is not None else None, "max_batch_size": max_batch_size}
    lat, server, mem = report["latency"], report["server_latency"], report["rss_mb"]
    print(
        f"{streams} streams x {fps:g} fps x {seconds:g} s: sent {report['frames_sent']}, answered "
        f"{report['frames_answered']} ({report['answered_fps_per_stream']:.1f} fps/stream), dropped "
        f"{report['frames_dropped']} ({100 * report['drop_rate']:.0f}%), errors {report['frame_errors']}, "
        f"unaccounted {report['unaccounted']}\n"
        f"latency p50 {lat['p50_ms']:.0f} ms p99 {lat['p99_ms']:.0f} ms (server p50 {server['p50_ms']:.0f} "
        f"p99 {server['p99_ms']:.0f}), slope {report['latency_slope_s_per_s']:+.3f} s/s, "
        f"mean batch {report['mean_batch_size']:.1f}\n"
        f"RSS {mem['first_quarter']:.0f} -> {mem['last_quarter']:.0f} MB (max {mem['max']:.0f}), "
        f"load average {report['load_average_before'][0]:.2f} -> {report['load_average_after'][0]:.2f}"
    )
    write_report(out, {"benchmark": "stream", "model": str(DEFAULT_MODEL), "env": environment(device), **report})
    if report["unaccounted"] or report["frame_errors"] or report["closes"]:
        raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(main)
