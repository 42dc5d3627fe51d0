"""CPU threads follow the container's CPU quota (cgroup v2 or v1), not the host's core count."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import pytest
import torch

import service.cpus
from service.cpus import available_cpus, cgroup_cpu_limit, configure_threads


def cgroup(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_the_quota_is_read_from_cgroup_v2_and_v1(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(cgroup(tmp_path / "v2", {"cpu.max": "150000 100000\n"})) == 1.5
    assert cgroup_cpu_limit(cgroup(tmp_path / "v2max", {"cpu.max": "max 100000\n"})) is None
    v1 = {"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}
    assert cgroup_cpu_limit(cgroup(tmp_path / "v1", v1)) == 3.0
    unlimited = {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}
    assert cgroup_cpu_limit(cgroup(tmp_path / "v1max", unlimited)) is None
    assert cgroup_cpu_limit(tmp_path / "none") is None


def test_threads_are_the_quota_rounded_up_within_the_affinity(tmp_path: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    assert available_cpus(cgroup(tmp_path / "half", {"cpu.max": "50000 100000"})) == 1
    assert available_cpus(cgroup(tmp_path / "some", {"cpu.max": "100001 100000"})) == min(2, cores)
    assert available_cpus(cgroup(tmp_path / "lots", {"cpu.max": "6400000 100000"})) == cores
    assert available_cpus(tmp_path / "none") == cores


def test_torch_and_opencv_get_the_quota_unless_pose_threads_says_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads(), cv2.getNumThreads()
    try:
        monkeypatch.setattr(service.cpus, "available_cpus", lambda: 1)
        assert configure_threads(None) == 1 and torch.get_num_threads() == 1 and cv2.getNumThreads() == 1
        assert configure_threads(3) == 3 and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])
