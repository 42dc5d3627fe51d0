"""Loopback load test of the service: throughput and latency percentiles versus concurrency and batch size.

For each max batch size it starts ``python -m service`` on a free loopback port (or uses ``--url``), sends a
bounded number of requests at each concurrency level with a bounded asyncio client, and checks that every
request got exactly one response and that it is the right one (same image size and poses as a lone
request for that image).

With ``--faults`` it runs the fault load instead: twice the service's saturation (two full batches of
clients) sending valid photos mixed with bad inputs, images over the per-request pixel budget, clients
that disconnect, then a SIGTERM mid-load; it fails when a request is lost or answered twice, a status
is outside policy, no batch reaches the maximum size, or the peak RSS is over budget.

    python -m bench.load --images ../shared/data/coco_sample/mmpose --out bench/results/load_cpu.json
    python -m bench.load --faults --batch-sizes 4 --requests 60 --out bench/results/load_faults_cpu.json
"""

from __future__ import annotations

import asyncio
import json
import signal
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import cv2
import httpx
import numpy as np
import typer

from bench.common import environment, start_service, write_report

ROOT = Path(__file__).resolve().parents[1]


def serve_for_load(model: Path, batch: int, delay_ms: float, device: str, **env: str) -> tuple[str, subprocess.Popen]:
    """``python -m service`` on a free loopback port, once ready; ``env`` adds or overrides POSE_* settings."""
    settings: dict[str, str | None] = {
        "POSE_MODEL": str(model),
        "POSE_MAX_BATCH_SIZE": str(batch),
        "POSE_MAX_QUEUE_DELAY_MS": str(delay_ms),
        "POSE_DEVICE": device,
        "POSE_QUEUE_LIMIT": "1024",
        "POSE_REQUEST_TIMEOUT_S": "600",
        **env,
    }
    return start_service(settings)


def _signature(body: dict) -> tuple[int, int, int, np.ndarray]:
    result = body["results"][0]
    kpts = np.array([[k["x"], k["y"]] for p in result["people"] for k in p["keypoints"]])
    return result["width"], result["height"], len(result["people"]), kpts


def _same(got: tuple, expected: tuple) -> bool:
    """Same image and, pose for pose, the same joints: at least 90% of the expected poses have a returned
    pose whose median joint lies within 0.5 px, and the counts differ by at most 10% (or one). Batch
    composition changes the network's float summation order, which moves the odd ill-conditioned
    Gaussian-fitted joint, and with it a near-zero pose score across the response's score threshold, as in
    the authors' pipeline; a misrouted or corrupted answer matches almost nothing."""
    if got[:2] != expected[:2] or abs(got[2] - expected[2]) > max(1, expected[2] // 10):
        return False
    if got[2] == 0 or expected[2] == 0:
        return got[2] == expected[2]
    k = expected[3].shape[0] // expected[2]
    pg, pe = got[3].reshape(got[2], k, 2), expected[3].reshape(expected[2], k, 2)
    median = np.median(np.abs(pe[:, None] - pg[None]).max(-1), axis=-1)  # (expected, got)
    return float(np.mean(median.min(1) < 0.5)) >= 0.9


async def _level(url: str, payloads: list[bytes], expected: list[tuple], concurrency: int, requests: int) -> dict:
    latencies: list[float] = []
    batch_sizes: list[int] = []
    answered: dict[int, int] = {}
    wrong = failed = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal wrong, failed
        while not queue.empty():
            i = queue.get_nowait()
            which = i % len(payloads)
            start = time.perf_counter()
            r = await client.post("/v1/pose", content=payloads[which], headers={"content-type": "image/jpeg"})
            latencies.append(time.perf_counter() - start)
            answered[i] = answered.get(i, 0) + 1
            if r.status_code != 200:
                failed += 1
                continue
            batch_sizes.append(r.json()["timings"]["batch_size"])
            if not _same(_signature(r.json()), expected[which]):
                wrong += 1

    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "concurrency": concurrency,
        "requests": requests,
        "seconds": elapsed,
        "throughput_rps": requests / elapsed,
        "p50_ms": 1000 * q[49],
        "p95_ms": 1000 * q[94],
        "p99_ms": 1000 * q[98],
        "mean_batch": statistics.fmean(batch_sizes) if batch_sizes else 0.0,  # as each request saw it
        "max_batch": max(batch_sizes, default=0),
        "lost": requests - len(answered),
        "duplicated": sum(n - 1 for n in answered.values()),
        "failed": failed,
        "wrong": wrong,
    }


# --- Fault load: 2x saturation with bad inputs, big images, clients that leave, and a SIGTERM mid-load ---

SHUTDOWN_STATUSES = {503}  # after SIGTERM: requests the drain could not finish


@dataclass(frozen=True)
class Shot:
    """One request of the fault mix and the statuses policy allows for it before SIGTERM."""

    kind: str
    content: bytes
    media: str
    allowed: frozenset[int]
    params: dict[str, str] = field(default_factory=dict)
    give_up_s: float | None = None  # the client disconnects after this long (no answer expected)


def _png(array: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", array)
    assert ok
    return data.tobytes()


def fault_mix(photo: bytes, request_pixels: int) -> list[Shot]:
    """The repeating pattern: mostly valid photos, then each kind of fault once."""
    side = int(request_pixels**0.5) + 8  # just over the per-request pixel budget
    busy = (200, 429, 504)  # an admitted image may still meet a full queue or pixel budget, or time out
    valid = Shot("valid", photo, "image/jpeg", frozenset(busy))
    return [
        valid,
        valid,
        Shot("bad: truncated", photo[: len(photo) // 3], "image/jpeg", frozenset({400})),
        valid,
        Shot("bad: not an image", b"hello, not a picture", "image/jpeg", frozenset({415})),
        valid,
        Shot("bad: option", photo, "image/jpeg", frozenset({422}), {"max_people": "0"}),
        Shot("big: over budget", _png(np.zeros((side, side, 3), np.uint8)), "image/png", frozenset({413})),
        Shot("big: admitted", _png(np.full((side // 2, side // 2, 3), 90, np.uint8)), "image/png", frozenset(busy)),
        Shot("leaves", photo, "image/jpeg", frozenset(busy), give_up_s=0.05),
    ]


def _peak_rss_mb(pid: int) -> float:
    """The process's resident-set high-water mark (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def fault_load(
    url: str, proc: subprocess.Popen, photo: bytes, clients: int, requests: int, sigterm_at: float, request_pixels: int
) -> dict:
    """Send ``requests`` requests from ``clients`` concurrent clients; after ``sigterm_at`` of them were sent
    the clients stop (the load balancer has dropped the pod) and the service gets SIGTERM. Every request is
    tagged with its own X-Request-ID, so an answer that is missing, duplicated or misrouted shows."""
    mix = fault_mix(photo, request_pixels)
    outcomes: dict[str, list[str]] = {}
    violations: list[str] = []
    batch_sizes: list[int] = []
    live_ms: list[float] = []
    next_index = 0
    stop_at = int(requests * sigterm_at)
    stopped = asyncio.Event()
    terminated = False

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal next_index
        while next_index < stop_at and not stopped.is_set():
            i, next_index = next_index, next_index + 1
            shot, rid = mix[i % len(mix)], f"load-{i}"
            try:
                r = await http.post(
                    "/v1/pose",
                    content=shot.content,
                    params=shot.params,
                    headers={"content-type": shot.media, "x-request-id": rid},
                    timeout=shot.give_up_s or 120,
                )
            except httpx.TimeoutException:
                outcomes.setdefault(rid, []).append("left" if shot.give_up_s else "client timeout")
                if not shot.give_up_s:
                    violations.append(f"{rid} ({shot.kind}): no answer within 120 s")
                continue
            except httpx.TransportError as err:
                outcomes.setdefault(rid, []).append(type(err).__name__)
                violations.append(f"{rid} ({shot.kind}): lost ({type(err).__name__})")
                continue
            outcomes.setdefault(r.headers.get("x-request-id", "?"), []).append(str(r.status_code))
            allowed = shot.allowed | (SHUTDOWN_STATUSES if terminated else set())
            if r.status_code not in allowed and not shot.give_up_s:
                violations.append(f"{rid} ({shot.kind}): status {r.status_code} {r.text[:120]}")
            if r.status_code == 200:
                batch_sizes.append(r.json()["timings"]["batch_size"])

    async def probe_liveness(http: httpx.AsyncClient) -> None:
        while not stopped.is_set():
            start = time.perf_counter()
            await http.get("/health/live", timeout=30)
            live_ms.append(1000 * (time.perf_counter() - start))
            await asyncio.sleep(0.2)

    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=url) as http:
        probe = asyncio.ensure_future(probe_liveness(http))
        workers = [asyncio.ensure_future(client(http)) for _ in range(clients)]
        while next_index < stop_at:
            await asyncio.sleep(0.05)
        stopped.set()
        probe.cancel()
        await asyncio.sleep(0.2)  # the last requests sent reach the server before it stops accepting
        rss_mb = _peak_rss_mb(proc.pid)
        terminated = True
        proc.send_signal(signal.SIGTERM)
        await asyncio.gather(*workers)
    exit_code = await asyncio.to_thread(proc.wait, 120)
    sent = {f"load-{i}" for i in range(stop_at)}
    lost = sorted(sent - set(outcomes))
    duplicated = sorted(rid for rid, got in outcomes.items() if len(got) > 1)
    misrouted = sorted(set(outcomes) - sent)
    statuses: dict[str, int] = {}
    for got in outcomes.values():
        for o in got:
            statuses[o] = statuses.get(o, 0) + 1
    return {
        "clients": clients,
        "requests": stop_at,
        "seconds": time.perf_counter() - start,
        "statuses": dict(sorted(statuses.items())),
        "lost": lost,
        "duplicated": duplicated,
        "misrouted": misrouted,
        "violations": violations,
        "max_batch_size_seen": max(batch_sizes, default=0),
        "peak_rss_mb": rss_mb,
        "liveness_max_ms": max(live_ms, default=float("nan")),
        "exit_code": exit_code,
    }


def fault_settings(batch: int, request_pixels: int) -> dict[str, str]:
    """The service settings of the fault run: small budgets, so each policy is exercised."""
    return {
        "POSE_QUEUE_LIMIT": str(4 * batch),
        "POSE_REQUEST_TIMEOUT_S": "60",
        "POSE_DRAIN_TIMEOUT_S": "20",
        "POSE_MAX_REQUEST_PIXELS": str(request_pixels),
        "POSE_MAX_INFLIGHT_PIXELS": str(3 * request_pixels),
    }


def fault_verdict(report: dict, batch: int, rss_budget_mb: float) -> list[str]:
    """What the fault run got wrong; empty when every policy held."""
    problems = list(report["violations"])
    for key in ("lost", "duplicated", "misrouted"):
        if report[key]:
            problems.append(f"{key}: {report[key]}")
    if report["max_batch_size_seen"] < batch:
        problems.append(f"no batch reached the maximum of {batch} (largest: {report['max_batch_size_seen']})")
    if not report["peak_rss_mb"] <= rss_budget_mb:
        problems.append(f"peak RSS {report['peak_rss_mb']:.0f} MB is over the budget of {rss_budget_mb:.0f} MB")
    if report["exit_code"] != 0:
        problems.append(f"exit status {report['exit_code']} after SIGTERM")
    return problems


def run_faults(
    photo: Path,
    model: Path,
    batch: int,
    requests: int,
    device: str,
    request_pixels: int,
    rss_budget_mb: float,
    **env: str,
) -> tuple[dict, list[str]]:
    """Start a service (``env``: further settings), run :func:`fault_load` at twice its saturation (two full
    batches of clients), and judge the run."""
    url, proc = serve_for_load(model, batch, 10.0, device, **{**fault_settings(batch, request_pixels), **env})
    try:
        report = asyncio.run(fault_load(url, proc, photo.read_bytes(), 2 * batch, requests, 0.8, request_pixels))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    report |= {"max_batch_size": batch, "rss_budget_mb": rss_budget_mb, "request_pixels": request_pixels}
    return report, fault_verdict(report, batch, rss_budget_mb)


def main(
    images: Annotated[Path, typer.Option(help="folder of JPEG photos")] = ROOT.parent
    / "shared/data/coco_sample/mmpose",
    model: Annotated[Path, typer.Option(help="model config")] = ROOT / "tests/fixtures/tiny_coco_w8_256.yaml",
    batch_sizes: Annotated[list[int], typer.Option(help="max batch sizes to compare")] = [1, 8],  # noqa: B006
    concurrency: Annotated[list[int], typer.Option(help="concurrent clients")] = [1, 4, 16],  # noqa: B006
    requests: Annotated[int, typer.Option(help="requests per level")] = 32,
    delay_ms: float = 10.0,
    device: str = "cpu",
    url: Annotated[str | None, typer.Option(help="use a running service instead of starting one")] = None,
    faults: Annotated[
        bool, typer.Option(help="instead: the fault run (bad inputs, big images, leaving clients, SIGTERM)")
    ] = False,
    request_pixels: Annotated[int, typer.Option(help="fault run: the per-request pixel budget")] = 1_000_000,
    rss_budget_mb: Annotated[float, typer.Option(help="fault run: the service's peak RSS budget")] = 3000.0,
    out: Annotated[Path | None, typer.Option(help="JSON report")] = None,
) -> None:
    if faults:
        photo = sorted(images.glob("*.jpg"))[0]
        report, problems = run_faults(photo, model, batch_sizes[-1], requests, device, request_pixels, rss_budget_mb)
        print(json.dumps({k: v for k, v in report.items() if k not in ("lost", "duplicated", "misrouted")}, indent=1))
        write_report(out, {"benchmark": "load-faults", "model": str(model), "env": environment(device), **report})
        for problem in problems:
            print("FAIL", problem)
        if problems:
            raise typer.Exit(1)
        return
    payloads = [p.read_bytes() for p in sorted(images.glob("*.jpg"))]
    rows = []
    for batch in batch_sizes if url is None else [0]:
        base, proc = (url, None) if url else serve_for_load(model, batch, delay_ms, device)
        try:
            expected = [
                _signature(
                    httpx.post(f"{base}/v1/pose", content=p, headers={"content-type": "image/jpeg"}, timeout=600).json()
                )
                for p in payloads
            ]
            for c in concurrency:
                row = {"max_batch_size": batch, **asyncio.run(_level(base, payloads, expected, c, requests))}
                rows.append(row)
                print(
                    f"batch<={batch:>2} clients {c:>3}: {row['throughput_rps']:6.2f} req/s  p50 {row['p50_ms']:7.0f} ms"
                    f"  p95 {row['p95_ms']:7.0f}  p99 {row['p99_ms']:7.0f}  batch mean {row['mean_batch']:.1f}"
                    f" max {row['max_batch']}  lost {row['lost']} dup {row['duplicated']}"
                    f" failed {row['failed']} wrong {row['wrong']}"
                )
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=120)
    write_report(out, {"benchmark": "load", "model": str(model), "env": environment(device), "rows": rows})
    if any(r["lost"] or r["duplicated"] or r["failed"] or r["wrong"] for r in rows):
        raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(main)
