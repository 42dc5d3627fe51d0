"""A small stream load on loopback (``python -m service``, the embedded model): cameras sending faster than
the service answers must see drops reported, no errors, latency that does not grow and flat memory.

The service is made too slow for the cameras on any hardware: every batch waits its full queue delay
(200 ms) for images that never come, so each stream gets at most 5 answers a second out of 20 sent.
Speed itself is measured by ``python -m bench.stream``, not here.
"""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import pytest

from bench.common import start_service
from bench.stream import stream_load
from pose.config import DEFAULT_MODEL

from .scenes import needs_embedded_model

STREAMS, FPS, SECONDS = 3, 20.0, 8.0
pytestmark = [pytest.mark.slow, needs_embedded_model]


def dropped_metric(url: str, text: str | None = None) -> float:
    """``pose_stream_frames_total{outcome="dropped"}`` from the service's ``/metrics`` (or ``text``)."""
    text = text if text is not None else httpx.get(f"{url}/metrics").text
    match = re.search(r'^pose_stream_frames_total\{outcome="dropped"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def test_overloaded_streams_drop_frames_but_stay_bounded_and_account_for_every_frame() -> None:
    url, proc = start_service(
        {
            "POSE_MODEL": str(DEFAULT_MODEL),
            "POSE_WARMUP": "false",
            "POSE_MAX_BATCH_SIZE": "8",
            "POSE_MAX_QUEUE_DELAY_MS": "200",
            "POSE_STREAM_QUEUE_FRAMES": "1",
            "POSE_API_KEY": None,
            "POSE_API_KEY_FILE": None,
        }
    )
    options = {"flip": "false"}
    try:
        # A first run lets the allocators reach their working size (a one-time step of ~100 MB on 2 cores);
        # memory is judged on the second.
        asyncio.run(stream_load(url, None, STREAMS, FPS, 4.0, options=options))
        dropped_before = dropped_metric(url)
        report = asyncio.run(stream_load(url, proc.pid, STREAMS, FPS, SECONDS, warmup_s=1.0, options=options))
        deadline = time.monotonic() + 10  # the server notices the closes a moment after the client
        while "pose_streams_open 0.0" not in (metrics := httpx.get(f"{url}/metrics").text):
            assert time.monotonic() < deadline, "streams still counted open after their clients left"
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert report["frame_errors"] == 0 and report["closes"] == [], report["errors"]
    assert report["unaccounted"] == 0  # every frame answered or reported dropped
    assert report["frames_dropped"] > 0 and report["frames_answered"] > 0
    assert dropped_metric(url, metrics) - dropped_before == report["frames_dropped"]
    assert all(n >= 1 for n in report["track_ids_per_stream"])
    # An unbounded queue would add 1 - 5/20 = 0.75 s of latency per second of run; a bounded one none.
    assert report["latency_slope_s_per_s"] < 0.4, report["latency"]
    assert report["rss_mb"]["growth"] < 100, report["rss_mb"]
