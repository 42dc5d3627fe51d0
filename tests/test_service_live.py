"""The service as it is deployed: ``python -m service`` under uvicorn on loopback.

Covers real sockets, readiness after warm-up, draining an in-flight request on SIGTERM, and a bounded
schemathesis run against the published OpenAPI schema (no 5xx for any generated request).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from pose.config import DEFAULT_MODEL

from .conftest import ROOT
from .scenes import needs_embedded_model, scene_jpeg

pytestmark = needs_embedded_model


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


@contextlib.contextmanager
def running_service(**env: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """``python -m service`` on a free loopback port, ready; killed afterwards if it has not exited."""
    port = free_port()
    env = {
        **os.environ,
        "POSE_MODEL": str(DEFAULT_MODEL),
        "POSE_HOST": "127.0.0.1",
        "POSE_PORT": str(port),
        "POSE_MAX_BATCH_SIZE": "2",
        "POSE_DRAIN_TIMEOUT_S": "60",
        **env,
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


@pytest.fixture()
def server() -> Iterator[tuple[str, subprocess.Popen]]:
    with running_service() as running:
        yield running


def test_serves_over_loopback_and_drains_in_flight_requests_on_sigterm(server: tuple[str, subprocess.Popen]) -> None:
    url, proc = server
    data = scene_jpeg()
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
    assert proc.wait(timeout=60) == 0  # a completed drain is a clean exit
    log = proc.stdout.read() if proc.stdout else ""
    assert "Application shutdown complete" in log


def test_requests_the_drain_cannot_finish_get_a_json_503_and_the_exit_is_clean() -> None:
    data = scene_jpeg()
    with running_service(POSE_DRAIN_TIMEOUT_S="0.3", POSE_MAX_BATCH_SIZE="1") as (url, proc):
        responses: list[httpx.Response | Exception] = []

        def client() -> None:
            try:
                responses.append(
                    httpx.post(f"{url}/v1/pose", content=data, headers={"content-type": "image/jpeg"}, timeout=60)
                )
            except httpx.HTTPError as err:  # a dropped connection would land here
                responses.append(err)

        threads = [threading.Thread(target=client) for _ in range(6)]
        for t in threads:
            t.start()
        time.sleep(0.3)  # all six are in flight: one batch of one image runs, the others queue
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(timeout=60)
        assert proc.wait(timeout=60) == 0
    assert len(responses) == 6 and all(isinstance(r, httpx.Response) for r in responses), responses
    statuses = [r.status_code for r in responses if isinstance(r, httpx.Response)]
    assert set(statuses) <= {200, 503} and 503 in statuses, statuses
    for r in responses:
        if isinstance(r, httpx.Response) and r.status_code == 503:
            assert r.json()["error"]["code"] == "shutting_down" and r.headers["x-request-id"]


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
