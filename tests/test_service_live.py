"""The service as it is deployed: ``python -m service`` under uvicorn on loopback.

Covers real sockets, readiness after warm-up, draining an in-flight request on SIGTERM, and a bounded
schemathesis run against the published OpenAPI schema (no 5xx for any generated request).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import DATA, FIXTURES, PARITY, ROOT

PHOTO = DATA / "coco_sample" / "mmpose" / "000000040083.jpg"
pytestmark = pytest.mark.skipif(
    not (PHOTO.is_file() and (PARITY / "coco" / "ckpt.pth").is_file()), reason="needs ../shared (tiny model and photos)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited with {proc.returncode}: {proc.stdout.read() if proc.stdout else ''}")
        try:
            if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise TimeoutError("service did not become ready")


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    port = free_port()
    env = {
        **os.environ,
        "POSE_MODEL": str(FIXTURES / "tiny_coco_w8_256.yaml"),
        "POSE_HOST": "127.0.0.1",
        "POSE_PORT": str(port),
        "POSE_MAX_BATCH_SIZE": "2",
        "POSE_DRAIN_TIMEOUT_S": "60",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "service"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def test_serves_over_loopback_and_drains_in_flight_requests_on_sigterm(server: tuple[str, subprocess.Popen]) -> None:
    url, proc = server
    data = PHOTO.read_bytes()
    r = httpx.post(f"{url}/v1/pose", content=data, headers={"content-type": "image/jpeg"}, timeout=60)
    assert r.status_code == 200 and r.json()["results"][0]["people"]
    outcome: dict[str, int] = {}

    def slow_client() -> None:
        response = httpx.post(
            f"{url}/v1/pose", content=data, headers={"content-type": "image/jpeg"}, params={"overlay": True}, timeout=60
        )
        outcome["status"] = response.status_code

    thread = threading.Thread(target=slow_client)
    thread.start()
    time.sleep(0.15)  # the request is in flight
    proc.send_signal(signal.SIGTERM)
    thread.join(timeout=60)
    assert outcome.get("status") == 200  # finished, not cut off
    # uvicorn re-raises the signal once shutdown completed, so the exit status is "killed by SIGTERM".
    assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
    log = proc.stdout.read() if proc.stdout else ""
    assert "Application shutdown complete" in log


@pytest.mark.skipif(shutil.which("schemathesis") is None, reason="schemathesis CLI not installed")
def test_schemathesis_finds_no_server_errors(server: tuple[str, subprocess.Popen]) -> None:
    url, _ = server
    result = subprocess.run(
        [
            "schemathesis",
            "run",
            f"{url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "15",
            "--workers",
            "1",
            "--seed",
            "1",
            "--request-timeout",
            "60",
            "--no-color",
            "--suppress-health-check",
            "all",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
