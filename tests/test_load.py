"""The fault load of ``bench.load`` in the suite, small: twice the service's saturation with bad inputs,
images over budget, clients that leave and a SIGTERM mid-load; no request lost or answered twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.load import run_faults
from pose.config import DEFAULT_MODEL

from .scenes import needs_embedded_model, scene_jpeg

pytestmark = [
    pytest.mark.slow,
    needs_embedded_model,
]


def test_fault_load_loses_nothing_and_keeps_every_policy(tmp_path: Path) -> None:
    scene = tmp_path / "scene.jpg"
    scene.write_bytes(scene_jpeg())
    report, problems = run_faults(
        scene,
        DEFAULT_MODEL,
        batch=4,
        requests=40,
        device="cpu",
        request_pixels=1_000_000,
        rss_budget_mb=1500,
        POSE_WARMUP="false",  # readiness sooner; warm-up is not what this run checks
    )
    assert problems == [], problems  # lost, duplicated, misrouted, off-policy status, batch size, RSS, exit
    statuses = report["statuses"]
    for kind in ("200", "400", "413", "415", "422", "left"):  # every kind of request was sent and answered
        assert statuses.get(kind, 0) > 0, statuses
    assert not any(s.startswith("5") and s not in ("503", "504") for s in statuses), statuses
