"""Timing and report helpers shared by the benchmark scripts."""

from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
# The COCO sample photos; POSE_BENCH_PHOTOS points elsewhere (a host that has the repository alone).
PHOTOS = Path(os.environ.get("POSE_BENCH_PHOTOS", ROOT.parent / "shared" / "data" / "coco_sample" / "mmpose"))


def environment(device: str) -> dict[str, Any]:
    """What the numbers were measured on."""
    env: dict[str, Any] = {
        "device": device,
        "cpu": platform.processor() or platform.machine(),
        "cpu_int8_instructions": cpu_int8_instructions(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    for module in ("cv2", "scipy", "onnxruntime"):  # the other libraries the numbers depend on (README, Versions)
        try:
            env[module] = __import__(module).__version__
        except ImportError:
            env[module] = None
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    return env


def cpu_int8_instructions() -> list[str] | None:
    """The CPU's int8 dot-product instructions. Without them ONNX Runtime's int8 convolutions take another path,
    one that can saturate, so int8 agreement belongs to the machine as well as the model. None where unknown."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return None
    return sorted(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


def time_call(fn: Callable[[], Any], repeat: int, warmup: int = 1, device: str = "cpu") -> dict[str, float]:
    """Median, min and max wall time of ``fn`` in milliseconds (CUDA synchronized)."""

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1000)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "repeat": repeat}


def write_report(path: Path | None, report: dict[str, Any]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2))
        print(f"report -> {path}")


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_service(
    settings: dict[str, str | None], log: IO[str] | None = None, timeout_s: float = 300
) -> tuple[str, subprocess.Popen]:
    """``python -m service`` on a free loopback port with ``POSE_*`` settings; returns once it is ready.

    A ``None`` value removes that variable from the inherited environment. Raises if the process exits or
    is not ready in time (then it is killed).
    """
    import httpx

    port = free_port()
    env = {k: v for k, v in {**os.environ, **settings}.items() if v is not None}
    env.update(POSE_HOST="127.0.0.1", POSE_PORT=str(port))
    sink = log if log is not None else subprocess.DEVNULL
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=root, env=env, stdout=sink, stderr=sink)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                return url, proc
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise TimeoutError(f"the service was not ready within {timeout_s:.0f} s")


def sample_images() -> list[np.ndarray]:
    """The shared COCO sample photos (RGB) when present, else drawn scenes of the same sizes."""
    import cv2

    photos = sorted(PHOTOS.glob("*.jpg"))
    if photos:
        return [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in photos]
    return drawn_scenes(4, (480, 640))


def drawn_scenes(n: int, size: tuple[int, int]) -> list[np.ndarray]:
    """``n`` seeded synthetic scenes (RGB) of 2-6 drawn people: the scenes the runtimes' start-up check uses."""
    from pose.runtimes.agreement import drawn_scenes as scenes

    return scenes(n, size)


def model_pipeline(model: Path, backend: Any) -> Any:
    """The service's pipeline of a model folder on a backend, with the model's scoring net when it has one."""
    from pose.config import load_model_config
    from pose.pipeline import BatchPipeline
    from pose.rescore import load_scoring_net

    config = load_model_config(model)
    rescore = config.resolve(config.rescore_weights)
    scoring = None
    if rescore is not None and rescore.is_file():
        scoring = load_scoring_net(rescore, config.keypoints.score_feature_dim).to(backend.device)
    return BatchPipeline(config, backend, scoring, backend.device)


def match_poses(reference: Any, other: Any) -> tuple[int, int]:
    """Poses of ``reference`` with a pose of ``other`` whose median joint distance is under 0.5 px."""
    from pose.runtimes.agreement import match_poses as match

    return match(reference, other)


def pose_agreement(reference: list[Any], other: list[Any]) -> dict[str, Any]:
    """How many of the reference's poses the other run reproduces within 0.5 px, image by image, and on how
    many images the two give the same number of poses."""
    from pose.runtimes.agreement import pose_agreement as agreement

    return agreement(reference, other).as_dict()
