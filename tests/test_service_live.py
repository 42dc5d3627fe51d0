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
from pathlib import Path

import httpx
import numpy as np
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
def running_service(command: list[str] | None = None, **env: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """``python -m service`` (or ``python *command``) on a free loopback port, ready; killed afterwards if it
    has not exited."""
    url, proc = start_unready({"POSE_MAX_BATCH_SIZE": "2", "POSE_DRAIN_TIMEOUT_S": "60", **env}, command)
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


# The service with every batch slowed by a minute: what SIGTERM must not wait for.
SLOWED_SERVICE = """
import time
import service.app as app

served = app._run_batch


def slowed(state):
    run = served(state)

    def run_slowly(images, options):
        time.sleep(60)
        return run(images, options)

    return run_slowly


app._run_batch = slowed
from service.__main__ import main

main()
"""


def test_sigterm_during_a_long_batch_exits_cleanly_within_the_drain_bound() -> None:
    from service.__main__ import SHUTDOWN_MARGIN_S

    drain_s = 1.0
    data = scene_jpeg()
    with running_service(
        POSE_DRAIN_TIMEOUT_S=str(drain_s), POSE_MAX_BATCH_SIZE="1", command=["-c", SLOWED_SERVICE]
    ) as (url, proc):
        responses: list[httpx.Response | Exception] = []

        def client() -> None:
            try:
                responses.append(
                    httpx.post(f"{url}/v1/pose", content=data, headers={"content-type": "image/jpeg"}, timeout=90)
                )
            except httpx.HTTPError as err:
                responses.append(err)

        threads = [threading.Thread(target=client) for _ in range(3)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while "pose_queue_depth 2.0" not in httpx.get(f"{url}/metrics").text:  # one computes, two wait
            assert time.monotonic() < deadline, "the requests never queued"
            time.sleep(0.1)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=90)
        exited_after = time.monotonic() - signalled
        for t in threads:
            t.join(timeout=30)
    log = proc.stdout.read() if proc.stdout else ""
    assert code == 0, log
    assert exited_after <= drain_s + SHUTDOWN_MARGIN_S, (exited_after, log)  # not the minute the batch takes
    assert "abandoned" in log  # it says why it did not wait
    statuses = [r.status_code if isinstance(r, httpx.Response) else repr(r) for r in responses]
    assert statuses == [503, 503, 503], statuses  # everyone was answered, the computing one included


def spawn_service(settings: dict[str, str], command: list[str] | None = None) -> tuple[str, subprocess.Popen]:
    """``python -m service`` (or ``python *command``) on a free port with ``POSE_*`` settings, just launched."""
    port = free_port()
    env = {**os.environ, "POSE_MODEL": str(DEFAULT_MODEL), "POSE_HOST": "127.0.0.1", "POSE_PORT": str(port), **settings}
    proc = subprocess.Popen(
        [sys.executable, *(command or ["-m", "service"])],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return f"http://127.0.0.1:{port}", proc


def start_unready(settings: dict[str, str], command: list[str] | None = None) -> tuple[str, subprocess.Popen]:
    """:func:`spawn_service`, returned as soon as the port answers (before readiness)."""
    url, proc = spawn_service(settings, command)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/health/live", timeout=1)
            return url, proc
        except httpx.TransportError:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.1)
    proc.kill()
    raise TimeoutError("the port did not open")


@pytest.mark.long
def test_a_first_start_opens_the_port_at_once_serves_torch_then_switches_to_onnx_runtime(tmp_path: Path) -> None:
    url, proc = start_unready({"POSE_ONNX_CACHE": str(tmp_path / "onnx")})  # nothing exported yet
    try:
        early = httpx.get(f"{url}/health/ready", timeout=5)
        assert early.status_code == 503 and "torch network" in early.json()["reason"], early.text
        assert httpx.get(f"{url}/health/live", timeout=5).status_code == 200
        wait_ready(url, proc)
        assert models(url)["backend"] == "torch"  # ready before the export ended
        r = httpx.post(f"{url}/v1/pose", content=scene_jpeg(), headers={"content-type": "image/jpeg"}, timeout=60)
        assert r.status_code == 200 and r.json()["results"][0]["people"]
        deadline = time.monotonic() + 300
        while models(url)["backend"] != "onnx":
            assert time.monotonic() < deadline and proc.poll() is None, "ONNX Runtime never took over"
            time.sleep(0.5)
        again = httpx.post(f"{url}/v1/pose", content=scene_jpeg(), headers={"content-type": "image/jpeg"}, timeout=60)
        people = lambda response: [p["score"] for p in response.json()["results"][0]["people"]]  # noqa: E731
        assert again.status_code == 200 and np.allclose(people(again), people(r), atol=1e-3)  # the same poses
        assert list((tmp_path / "onnx").rglob("*.onnx"))  # exported into the cache the next start reads
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


def test_a_start_up_that_fails_says_why_in_the_log_and_exits_with_status_1(tmp_path: Path) -> None:
    broken = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL, broken, ignore=shutil.ignore_patterns("*.pth"))  # a config without weights
    _, proc = spawn_service({"POSE_MODEL": str(broken)})  # it may exit before the port is ever seen open
    assert proc.wait(timeout=60) == 1  # not serving 503s for ever: the orchestrator sees the failure
    log = proc.stdout.read() if proc.stdout else ""
    assert "the model could not be prepared" in log and "model.pth" in log, log


def models(url: str) -> dict:
    return httpx.get(f"{url}/v1/models", timeout=5).json()["models"][0]["runtime"]
