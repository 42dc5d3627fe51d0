"""How many CPU threads the service may use: the container's CPU quota, not the host's core count.

In a container, ``os.cpu_count()`` and torch's default report every core of the node, while the cgroup
lets the process run only ``quota / period`` cores' worth of time; a pool sized by the node is throttled
and its threads thrash. Read once at start-up; ``POSE_THREADS`` overrides.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import cv2
import torch

__all__ = ["available_cpus", "cgroup_cpu_limit", "configure_threads"]

log = logging.getLogger("pose.service")
CGROUP = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP) -> float | None:
    """Cores' worth of CPU time the cgroup allows (v2 ``cpu.max`` or v1 CFS quota); ``None``: no limit."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]  # v2: "max 100000" or "200000 100000"
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())  # v1: -1 means no limit
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us


def available_cpus(root: Path = CGROUP) -> int:
    """Cores this process may use: its CPU affinity, capped by the cgroup quota (rounded up, at least 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    return max(1, min(cores, math.ceil(limit)) if limit is not None else cores)


def configure_threads(threads: int | None) -> int:
    """Size torch's intra-op pool and OpenCV's to ``threads`` (default: :func:`available_cpus`)."""
    n = threads or available_cpus()
    torch.set_num_threads(n)
    cv2.setNumThreads(n)
    log.info("using %d CPU threads (%s)", n, "POSE_THREADS" if threads else "container CPU quota")
    return n
